package cni

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadDefault(t *testing.T) {
	bin := t.TempDir()
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if err := os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const good = `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},{"type":"loopback"}]}`
	const missingPlugin = `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"portmap"}]}`
	const singleConf = `{"cniVersion":"0.4.0","name":"single","type":"bridge"}`

	tests := []struct {
		name     string
		files    map[string]string
		wantFile string
		wantErr  []string
	}{
		{name: "empty dir", wantErr: []string{"no .conflist/.conf files"}},
		{name: "one good list", files: map[string]string{"10-pods.conflist": good}, wantFile: "10-pods.conflist"},
		{name: "lexical order wins", files: map[string]string{"20-b.conflist": good, "10-a.conflist": good}, wantFile: "10-a.conflist"},
		{name: "missing plugin is skipped with reason", files: map[string]string{"05-x.conflist": missingPlugin, "10-pods.conflist": good}, wantFile: "10-pods.conflist"},
		{name: "only a missing plugin", files: map[string]string{"05-x.conflist": missingPlugin}, wantErr: []string{"05-x.conflist", `plugin "portmap" not found`}},
		{name: "garbage", files: map[string]string{"10-bad.conflist": "{"}, wantErr: []string{"10-bad.conflist"}},
		{name: "single .conf becomes a list", files: map[string]string{"10-single.conf": singleConf}, wantFile: "10-single.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, body := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, n), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			net, err := LoadDefault(dir, []string{bin})
			probeErr := Probe{ConfDir: dir, BinDirs: []string{bin}}.Ready()
			if len(tt.wantErr) > 0 {
				if err == nil || !errors.Is(err, ErrNoNetwork) || probeErr == nil {
					t.Fatalf("want ErrNoNetwork, got %v / probe %v", err, probeErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("error %q lacks %q", err, s)
					}
				}
				return
			}
			if err != nil || probeErr != nil {
				t.Fatalf("unexpected error %v / probe %v", err, probeErr)
			}
			if filepath.Base(net.File) != tt.wantFile {
				t.Fatalf("picked %s, want %s", net.File, tt.wantFile)
			}
		})
	}
}
