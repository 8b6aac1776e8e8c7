package image

import (
	"context"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"
)

// FsUsage is the space and inodes the image store takes.
type FsUsage struct {
	Mountpoint string
	UsedBytes  uint64
	InodesUsed uint64
	Timestamp  time.Time
}

// FsInfo walks the graph root and counts what it holds; hard links count once.
func (s *Service) FsInfo(ctx context.Context) (FsUsage, error) {
	u := FsUsage{Mountpoint: s.cfg.GraphRoot, Timestamp: time.Now()}
	var root syscall.Stat_t
	if err := syscall.Stat(s.cfg.GraphRoot, &root); err != nil {
		return u, err
	}
	seen := map[uint64]struct{}{}
	err := filepath.WalkDir(s.cfg.GraphRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a layer removed under our feet is not an error
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if st.Dev != root.Dev {
			// A container rootfs mounted inside the store is not image data.
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if _, dup := seen[st.Ino]; dup {
			return nil
		}
		seen[st.Ino] = struct{}{}
		u.InodesUsed++
		u.UsedBytes += uint64(st.Blocks) * 512
		return nil
	})
	return u, err
}
