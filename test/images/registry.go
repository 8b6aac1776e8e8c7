package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

const (
	pidFile   = "registry.pid"
	logFile   = "registry.log"
	cfgFile   = "config.yml"
	dataDir   = "data"
	confFile  = "registries.conf"
	readyWait = 15 * time.Second
	stopWait  = 5 * time.Second
)

// stateFiles are the only entries "down" expects in the state directory;
// anything else means the directory is not ours and is left alone.
var stateFiles = map[string]bool{pidFile: true, logFile: true, cfgFile: true, dataDir: true, confFile: true}

var errNoRegistry = errors.New("nothing listening")

// httpClient never goes through a proxy: the registry is always local.
var httpClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return &http.Client{Transport: t}
}()

// ping reports whether a registry answers 200 on /v2/. errNoRegistry means
// nothing accepted the connection.
func ping(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) && errno == syscall.ECONNREFUSED {
			return errNoRegistry
		}
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET http://%s/v2/: %s (not a plain registry?)", addr, resp.Status)
	}
	return nil
}

func registryConfig(dir, addr string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, dataDir), addr)
}

// startRegistry launches docker-registry detached in its own session so it
// outlives this command, and waits until it serves /v2/.
func startRegistry(ctx context.Context, bin, dir, addr string) (int, error) {
	cfg := filepath.Join(dir, cfgFile)
	if err := os.WriteFile(cfg, []byte(registryConfig(dir, addr)), 0o644); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		_ = stopProcess(pid, exited)
		return 0, err
	}

	deadline := time.Now().Add(readyWait)
	for {
		err := ping(ctx, addr)
		if err == nil {
			return pid, nil
		}
		select {
		case werr := <-exited:
			os.Remove(filepath.Join(dir, pidFile))
			return 0, fmt.Errorf("docker-registry exited (%v) before serving %s; log:\n%s", werr, addr, tail(filepath.Join(dir, logFile)))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = stopProcess(pid, exited)
			os.Remove(filepath.Join(dir, pidFile))
			return 0, fmt.Errorf("docker-registry did not answer on %s within %s (last error: %v); log:\n%s", addr, readyWait, err, tail(filepath.Join(dir, logFile)))
		}
	}
}

// stopProcess sends SIGTERM, then SIGKILL after stopWait. exited, if not
// nil, reports the exit of a child of this process (which must be reaped).
func stopProcess(pid int, exited <-chan error) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	if waitGone(pid, exited, stopWait) {
		return nil
	}
	logrus.Warnf("registry pid %d ignored SIGTERM for %s, killing", pid, stopWait)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if !waitGone(pid, exited, stopWait) {
		return fmt.Errorf("pid %d still alive after SIGKILL", pid)
	}
	return nil
}

func waitGone(pid int, exited <-chan error, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if exited != nil {
			select {
			case <-exited:
				return true
			default:
			}
		} else if !alive(pid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// alive treats zombies as gone: a registry started by an earlier command
// is reaped by init, not by us.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// isRegistry checks that pid still runs docker-registry, so a stale pid
// file never gets an unrelated process killed.
func isRegistry(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return filepath.Base(argv0) == "docker-registry" && alive(pid)
}

// readPid returns the pid recorded in dir, or 0 if there is none.
func readPid(dir string) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, pidFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid file %s: %q", filepath.Join(dir, pidFile), data)
	}
	return pid, nil
}

// stopRegistry stops the registry recorded in dir, if it still runs, and
// reports whether it had to stop one.
func stopRegistry(dir string) (bool, error) {
	pid, err := readPid(dir)
	if err != nil || pid == 0 {
		return false, err
	}
	stopped := false
	if !isRegistry(pid) {
		logrus.Infof("pid %d from %s is not a running docker-registry; not signalling it", pid, pidFile)
	} else if err := stopProcess(pid, nil); err != nil {
		return false, fmt.Errorf("stop docker-registry (pid %d): %w", pid, err)
	} else {
		stopped = true
	}
	return stopped, os.Remove(filepath.Join(dir, pidFile))
}

func tail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}
