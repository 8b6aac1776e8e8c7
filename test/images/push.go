package main

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"
)

// pushResult counts tags written versus tags already up to date.
type pushResult struct{ Pushed, Skipped int }

// pushAll pushes every name of every image to the registry under its mirror
// path, skipping tags that already point at the right manifest. remote.Write
// itself skips blobs the registry has, so a second `up` uploads nothing.
func pushAll(ctx context.Context, addr string, specs []imageSpec, imgs []v1.Image) (pushResult, error) {
	var res pushResult
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(httpClient.Transport)}
	for i, spec := range specs {
		want, err := imgs[i].Digest()
		if err != nil {
			return res, err
		}
		for _, n := range spec.Names {
			repo, tag, err := mirrorPath(n)
			if err != nil {
				return res, err
			}
			ref, err := name.NewTag(addr+"/"+repo+":"+tag, name.Insecure)
			if err != nil {
				return res, err
			}
			if desc, err := remote.Head(ref, opts...); err == nil && desc.Digest == want {
				res.Skipped++
				continue
			}
			if err := remote.Write(ref, imgs[i], opts...); err != nil {
				return res, fmt.Errorf("push %s to %s: %w", n, ref, err)
			}
			res.Pushed++
			logrus.Debugf("pushed %s as %s", n, ref)
		}
	}
	return res, nil
}
