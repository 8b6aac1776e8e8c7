package agent

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-runtime/cocoon/agent/netconf"
	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
)

// CreateSandbox sets up the guest for the pod: hostname, DNS, hosts, sysctls and the shares.
func (s *Server) CreateSandbox(_ context.Context, req *agentapi.CreateSandboxRequest) (*emptypb.Empty, error) {
	if s.engine.host != nil {
		return empty, s.engine.host.createSandbox(req)
	}
	if err := netconf.BringUpLoopback(); err != nil {
		return nil, status.Errorf(codes.Internal, "loopback: %v", err)
	}
	if err := setClock(req.GetClockUnixNano()); err != nil {
		return nil, err
	}
	if err := addEntropy(req.GetEntropy()); err != nil {
		return nil, err
	}
	if h := req.GetHostname(); h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "hostname %q: %v", h, err)
		}
		if err := os.WriteFile("/etc/hostname", []byte(h+"\n"), 0o644); err != nil {
			return nil, errorf(codes.Internal, err)
		}
	}
	for name, body := range map[string]string{"/etc/resolv.conf": req.GetResolvConf(), "/etc/hosts": req.GetHosts()} {
		if body == "" {
			continue
		}
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			return nil, errorf(codes.Internal, err)
		}
	}
	for key, value := range req.GetSysctls() {
		if err := writeSysctl(key, value); err != nil {
			return nil, err
		}
	}
	for _, sh := range req.GetShares() {
		if err := mountShare(sh); err != nil {
			return nil, err
		}
	}
	if req.GetSharedPidNamespace() {
		if _, err := startPodPIDNamespace(); err != nil {
			return nil, errorf(codes.Internal, err)
		}
	}
	return empty, nil
}

// maxEntropy bounds what one CreateSandbox may credit: the kernel's input
// pool is 256 bytes, more adds nothing.
const maxEntropy = 512

// setClock sets the guest's wall clock to the host's, when the host sent it.
func setClock(unixNano int64) error {
	if unixNano == 0 {
		return nil
	}
	ts := unix.NsecToTimespec(unixNano)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return status.Errorf(codes.Internal, "set clock: %v", err)
	}
	return nil
}

// addEntropy mixes the host's random bytes into the guest's pool and credits
// them (RNDADDENTROPY), so a guest made ahead of its pod starts with fresh,
// unshared random state.
func addEntropy(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if len(b) > maxEntropy {
		return status.Errorf(codes.InvalidArgument, "entropy: %d bytes, at most %d", len(b), maxEntropy)
	}
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return status.Errorf(codes.Internal, "entropy: %v", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); errno != 0 {
		return status.Errorf(codes.Internal, "entropy: RNDADDENTROPY: %v", errno)
	}
	// Since Linux 5.18 added entropy does not reach a running CRNG until its
	// next scheduled reseed (up to a minute): clones of one template would
	// hand out the same random bytes until then. Reseed now.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 {
		return status.Errorf(codes.Internal, "entropy: RNDRESEEDCRNG: %v", errno)
	}
	return nil
}

// rndReseedCRNG is RNDRESEEDCRNG, _IO('R', 0x07) in linux/random.h (not in
// x/sys/unix).
const rndReseedCRNG = 0x5207

// writeSysctl sets one sysctl; keys are dotted ("net.ipv4.ip_forward").
func writeSysctl(key, value string) error {
	if key == "" || strings.Contains(key, "..") || strings.ContainsAny(key, "/\x00") {
		return status.Errorf(codes.InvalidArgument, "bad sysctl %q", key)
	}
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return status.Errorf(codes.InvalidArgument, "sysctl %s=%s: %v", key, value, err)
	}
	return nil
}

func mountShare(sh *agentapi.Share) error {
	mp := sh.GetMountPoint()
	if !filepath.IsAbs(mp) || sh.GetTag() == "" {
		return status.Errorf(codes.InvalidArgument, "share %q at %q: need a tag and an absolute mount point", sh.GetTag(), mp)
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return errorf(codes.Internal, err)
	}
	fstype, data := "virtiofs", ""
	if sh.GetKind() == agentapi.Share_NINEP {
		fstype, data = "9p", "trans=virtio,version=9p2000.L,cache=mmap,msize=262144"
	}
	if err := unix.Mount(sh.GetTag(), mp, fstype, 0, data); err != nil {
		return status.Errorf(codes.Internal, "mount %s share %q on %s: %v", fstype, sh.GetTag(), mp, err)
	}
	return nil
}

// DestroySandbox kills every container and powers the VM off once the reply is out.
func (s *Server) DestroySandbox(context.Context, *agentapi.DestroySandboxRequest) (*emptypb.Empty, error) {
	err := s.engine.removeAll()
	go func() {
		time.Sleep(100 * time.Millisecond)
		s.powerOff()
	}()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "removing containers: %v", err)
	}
	return empty, nil
}
