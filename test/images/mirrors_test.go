package main

import (
	"os"
	"path/filepath"
	"testing"

	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	"go.podman.io/image/v5/types"
)

// TestRegistriesConfResolves feeds the generated table to the same parser
// containers/image uses and checks that every critest name is pulled from
// the mirror path pushAll writes it to.
func TestRegistriesConfResolves(t *testing.T) {
	const addr = "127.0.0.1:5000"
	hosts, err := mirroredHosts(catalog())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "registries.conf")
	if err := os.WriteFile(conf, []byte(registriesConf(addr, hosts)), 0o644); err != nil {
		t.Fatal(err)
	}
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    conf,
		SystemRegistriesConfDirPath: filepath.Join(dir, "none.d"),
	}
	for _, n := range critestNames {
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			t.Fatal(err)
		}
		named = reference.TagNameOnly(named)
		reg, err := sysregistriesv2.FindRegistry(sys, named.String())
		if err != nil || reg == nil {
			t.Fatalf("%s: no registry entry (%v)", n, err)
		}
		srcs, err := reg.PullSourcesFromReference(named)
		if err != nil || len(srcs) != 2 {
			t.Fatalf("%s: pull sources %v, %v; want mirror then origin", n, srcs, err)
		}
		repo, tag, err := mirrorPath(n)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := srcs[0].Reference.String(), addr+"/"+repo+":"+tag; got != want || !srcs[0].Endpoint.Insecure {
			t.Errorf("%s: first source %s (insecure %v), want %s over plain http", n, got, srcs[0].Endpoint.Insecure, want)
		}
	}
	self, err := sysregistriesv2.FindRegistry(sys, addr+"/pause:3.9")
	if err != nil || self == nil || !self.Insecure {
		t.Errorf("the mirror itself is not marked insecure: %+v, %v", self, err)
	}
}
