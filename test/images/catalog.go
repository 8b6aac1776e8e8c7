package main

import (
	"fmt"
	"runtime"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// imageSpec describes one image. Every name in Names points at the same
// image (same config digest); separate specs always build distinct images.
type imageSpec struct {
	Names []string // references exactly as critest spells them
	Desc  string   // goes into the description label and layer history

	User       string
	Entrypoint []string
	Cmd        []string
	Env        []string // appended after PATH
	WorkingDir string
	Ports      []string // e.g. "80/tcp"

	// Files make up the image's own layer on top of the shared base.
	Files []file
}

// file is one entry of an image layer. Exactly one of Data (regular file),
// Link (symlink target), HardLink, Dir or Helper (a Go program built at run
// time) describes the content.
type file struct {
	Path     string // relative, no leading slash
	Mode     int64  // permission bits incl. setuid; 0 means 0644/0755
	UID, GID int
	Data     string
	Link     string
	HardLink string // target path inside the same layer
	Dir      bool
	Helper   string // name of an embedded helper program, see helpers.go
}

const (
	e2e     = "registry.k8s.io/e2e-test-images/"
	criTest = "gcr.io/k8s-staging-cri-tools/"
	ecr     = "public.ecr.aws/docker/library/"
)

// marker gives an otherwise plain busybox image its own layer (an empty
// file named after the image) so that its image ID differs from every
// other image, as critest's image-list specs require.
func marker(name string) []file { return []file{{Path: name}} }

// catalog lists every image critest v1.36.0 pulls (pkg/validate and
// pkg/benchmark), except the digest-pinned test-image-digest, whose bytes
// cannot be reproduced.
func catalog() []imageSpec {
	images := []imageSpec{
		{
			Names: []string{e2e + "busybox:1.29-2"},
			Desc:  "busybox applets, default container image of critest",
			Cmd:   []string{"sh"},
		},
		nginxSpec(e2e+"nginx:1.14-2", 80),
		nginxSpec(criTest+"hostnet-nginx-"+runtime.GOARCH, 12003),
		httpdSpec(e2e + "httpd:2.4.39-4"),
		{
			Names:      []string{e2e + "nonewprivs:1.3"},
			Desc:       "setuid-root program printing its effective uid",
			User:       "1000",
			Entrypoint: []string{"/usr/local/bin/nnp"},
			Files:      []file{{Path: "usr/local/bin/nnp", Mode: 0o4755, Helper: "nonewprivs"}},
		},
		{
			// critest pulls both names and expects one image ID.
			Names:      []string{"registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"},
			Desc:       "pause stand-in that sleeps until signalled",
			User:       "65535:65535",
			Entrypoint: []string{"/pause"},
			Files:      []file{{Path: "pause", Mode: 0o755, Data: pauseScript}},
		},
		{Names: []string{criTest + "test-image-user-uid"}, Desc: "USER uid", User: "1002"},
		{Names: []string{criTest + "test-image-user-username"}, Desc: "USER name", User: "www-data"},
		{Names: []string{criTest + "test-image-user-uid-group"}, Desc: "USER uid:gid", User: "1003:1004"},
		{Names: []string{criTest + "test-image-user-username-group"}, Desc: "USER name:gid", User: "www-data:1004"},
		{
			Names: []string{criTest + "test-image-predefined-group"},
			Desc:  "uid 1000 is a member of gid 50000 in /etc/group",
			User:  "1000",
			Files: []file{
				{Path: "etc/passwd", Data: basePasswd + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"},
				{Path: "etc/group", Data: baseGroup + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"},
				{Path: "home/default-user", Dir: true, Mode: 0o755, UID: 1000, GID: 1000},
			},
		},
		{Names: []string{criTest + "test-image-latest"}, Desc: "untagged reference", Files: marker("test-image-latest")},
		{Names: []string{criTest + "test-image-tag:test"}, Desc: "tagged reference", Files: marker("test-image-tag-test")},
		{Names: []string{criTest + "test-image-tag:all"}, Desc: "all reference kinds", Files: marker("test-image-tag-all")},
		{
			Names: []string{criTest + "test-image-tags:1", criTest + "test-image-tags:2", criTest + "test-image-tags:3"},
			Desc:  "one image, three tags",
			Files: marker("test-image-tags"),
		},
	}
	for _, n := range []string{"1", "2", "3"} {
		images = append(images, imageSpec{
			Names: []string{criTest + "test-image-" + n + ":latest"},
			Desc:  "one of three distinct images",
			Files: marker("test-image-" + n),
		})
	}
	// Image benchmark defaults; upstream these are different builds.
	for _, tag := range []string{"1.35.0-glibc", "1-uclibc", "1", "1-glibc", "1-musl"} {
		images = append(images, imageSpec{
			Names: []string{ecr + "busybox:" + tag},
			Desc:  "busybox for the image benchmarks",
			Cmd:   []string{"sh"},
			Files: marker("busybox-" + tag),
		})
	}
	// The upstream test images are busybox builds, whose default command is sh.
	for i := range images {
		if images[i].Entrypoint == nil && images[i].Cmd == nil {
			images[i].Cmd = []string{"sh"}
		}
	}
	return images
}

func nginxSpec(ref string, port int) imageSpec {
	w := webServer{
		Banner:  fmt.Sprintf("nginx stand-in (busybox httpd) listening on :%d", port),
		Port:    port,
		Root:    "/usr/share/nginx/html",
		PidFile: "/var/run/nginx.pid",
		// critest finds the server with "pidof nginx": the exec'd path
		// gives it comm "nginx", while argv[0]'s basename picks the
		// busybox applet.
		Exec:  "/usr/sbin/nginx",
		Argv0: "nginx: worker process /usr/sbin/httpd",
	}
	return imageSpec{
		Names:      []string{ref},
		Desc:       "web server standing in for nginx",
		Entrypoint: []string{"/docker-entrypoint.sh"},
		// Never read by the script: it only makes PID 1's cmdline read
		// like nginx's retitled master, which critest greps for.
		Cmd:   []string{"nginx: master process nginx -g daemon off;"},
		Env:   []string{"NGINX_VERSION=1.14.2"},
		Ports: []string{fmt.Sprintf("%d/tcp", port)},
		Files: []file{
			{Path: "docker-entrypoint.sh", Mode: 0o755, Data: w.script()},
			{Path: "usr/sbin/nginx", Link: "/bin/busybox"},
			{Path: "usr/share/nginx/html/index.html", Data: "<!DOCTYPE html>\n<html><body><h1>Welcome to nginx!</h1></body></html>\n"},
		},
	}
}

func httpdSpec(ref string) imageSpec {
	w := webServer{
		// critest waits for "httpd" in the container log.
		Banner:  "httpd: busybox httpd standing in for Apache httpd, listening on :80",
		Port:    80,
		Root:    "/usr/local/apache2/htdocs",
		PidFile: "/usr/local/apache2/logs/httpd.pid",
		Exec:    "/usr/sbin/httpd",
	}
	return imageSpec{
		Names:      []string{ref},
		Desc:       "web server standing in for Apache httpd",
		Cmd:        []string{"httpd-foreground"},
		Env:        []string{"HTTPD_PREFIX=/usr/local/apache2"},
		WorkingDir: "/usr/local/apache2",
		Ports:      []string{"80/tcp"},
		Files: []file{
			{Path: "usr/local/bin/httpd-foreground", Mode: 0o755, Data: w.script()},
			{Path: "usr/local/apache2/htdocs/index.html", Data: "<html><body><h1>It works!</h1></body></html>\n"},
			{Path: "usr/local/apache2/logs", Dir: true},
		},
	}
}

// webServer renders the start script shared by the web server images. PID 1
// stays a shell that forwards SIGTERM: busybox httpd as PID 1 would ignore
// it and every stop would wait for the kill timeout.
type webServer struct {
	Banner, Root, PidFile, Exec, Argv0 string
	Port                               int
}

func (w webServer) script() string {
	exec := w.Exec
	if w.Argv0 != "" {
		exec = "exec -a " + shellQuote(w.Argv0) + " " + w.Exec
	}
	return fmt.Sprintf(`#!/bin/sh
trap 'kill "$server" 2>/dev/null; wait "$server"; exit 0' TERM INT QUIT
echo %s
%s -f -p %d -h %s &
server=$!
echo "$server" > %s
wait "$server"
`, shellQuote(w.Banner), exec, w.Port, w.Root, w.PidFile)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

const pauseScript = `#!/bin/sh
# Stand-in for the pause binary: idle until told to stop.
trap 'kill "$s" 2>/dev/null; exit 0' TERM INT
while :; do
	sleep 2147483647 &
	s=$!
	wait "$s"
done
`

// mirrorPath maps a reference to its repository and tag on the mirror: the
// registry host is dropped, as containerd and containers-registries.conf
// mirrors do. A missing tag means "latest".
func mirrorPath(ref string) (repo, tag string, err error) {
	t, err := name.NewTag(ref)
	if err != nil {
		return "", "", fmt.Errorf("parse %q: %w", ref, err)
	}
	return t.RepositoryStr(), t.TagStr(), nil
}

// registryHost returns the registry part of a reference.
func registryHost(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("parse %q: %w", ref, err)
	}
	return r.Context().RegistryStr(), nil
}

// mirroredHosts lists the registries the catalog's names live on, sorted.
func mirroredHosts(images []imageSpec) ([]string, error) {
	seen := map[string]bool{}
	for _, img := range images {
		for _, n := range img.Names {
			h, err := registryHost(n)
			if err != nil {
				return nil, err
			}
			seen[h] = true
		}
	}
	hosts := make([]string, 0, len(seen))
	for h := range seen {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	return hosts, nil
}

// checkCatalog rejects two different images landing on one mirror path.
func checkCatalog(images []imageSpec) error {
	owner := map[string]int{}
	for i, img := range images {
		if len(img.Names) == 0 {
			return fmt.Errorf("image %d (%s) has no name", i, img.Desc)
		}
		for _, n := range img.Names {
			repo, tag, err := mirrorPath(n)
			if err != nil {
				return err
			}
			p := repo + ":" + tag
			if j, ok := owner[p]; ok && j != i {
				return fmt.Errorf("%s: mirror path %s already used by %s", n, p, images[j].Names[0])
			}
			owner[p] = i
		}
	}
	return nil
}
