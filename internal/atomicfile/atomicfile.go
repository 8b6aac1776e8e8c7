// Package atomicfile writes cocoond's persisted records so a crash leaves the
// old record or the new one, never half of one, and moves aside records that
// cannot be read so one bad file never stops the daemon.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
)

// WriteFile writes data to path atomically and durably: a temp file in the
// same directory, fsync, rename over path, fsync of the directory (without
// which the rename itself may not survive a power cut).
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory, making renames and removals in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// Remove deletes path durably; a missing file is fine.
func Remove(path string) error {
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// MoveAside renames a record that cannot be read to <path>.bad-<unix time>
// (kept for the operator, never read again) and logs it loudly. It returns the
// new path.
func MoveAside(path string, cause error, log *logrus.Entry) (string, error) {
	bad := fmt.Sprintf("%s.bad-%d", path, time.Now().Unix())
	for i := 1; ; i++ {
		if _, err := os.Lstat(bad); os.IsNotExist(err) {
			break
		}
		bad = fmt.Sprintf("%s.bad-%d.%d", path, time.Now().Unix(), i)
	}
	if err := os.Rename(path, bad); err != nil {
		log.WithError(err).WithField("path", path).Error("unreadable record could not be moved aside")
		return "", err
	}
	_ = SyncDir(filepath.Dir(path))
	log.WithError(cause).WithFields(logrus.Fields{"path": path, "moved_to": bad}).
		Error("unreadable record moved aside; whatever it described is reclaimed as unclaimed")
	return bad, nil
}

// ErrMovedAside says Load found the record unreadable and moved it aside.
var ErrMovedAside = errors.New("unreadable record moved aside")

// Load reads the record at path and hands it to decode. A record that cannot
// be read (a directory in its place, say) or that decode rejects (truncated,
// empty, unknown version) is moved aside with MoveAside and the result wraps
// ErrMovedAside, so callers skip it and carry on. A missing file is the
// os.ErrNotExist error.
func Load(path string, decode func([]byte) error, log *logrus.Entry) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err == nil {
		if len(data) == 0 {
			err = errors.New("empty file")
		} else {
			err = decode(data)
		}
	}
	if err == nil {
		return nil
	}
	bad, merr := MoveAside(path, err, log)
	if merr != nil {
		return fmt.Errorf("%s: %w (and moving it aside failed: %v)", path, err, merr)
	}
	return fmt.Errorf("%s: %w: %w (now %s)", path, ErrMovedAside, err, bad)
}

// IsTemp reports whether name is one of WriteFile's temp files (left by a
// crash between create and rename); loaders skip them.
func IsTemp(name string) bool {
	base := filepath.Base(name)
	return strings.HasPrefix(base, ".") && strings.Contains(base, ".tmp-")
}
