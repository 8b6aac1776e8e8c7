package cri

import (
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/image"
)

// toCRIImage maps the image service's view onto the CRI message. It must be
// deterministic: critest compares statuses fetched by ID, tag and digest.
func toCRIImage(img *image.Image) *runtimeapi.Image {
	out := &runtimeapi.Image{
		Id:          img.ID,
		RepoTags:    img.RepoTags,
		RepoDigests: img.RepoDigests,
		Size:        img.Size,
		Spec:        &runtimeapi.ImageSpec{Image: img.ID},
	}
	uid, hasUID, username := img.User()
	if hasUID {
		out.Uid = &runtimeapi.Int64Value{Value: uid}
	}
	out.Username = username
	if img.Config != nil {
		out.Spec.Annotations = img.Config.Config.Labels
	}
	return out
}

// verboseImageInfo is ImageStatus's verbose "info" entry: the OCI config and identity.
func verboseImageInfo(img *image.Image) (map[string]string, error) {
	info := struct {
		ID          string   `json:"id"`
		RepoTags    []string `json:"repoTags"`
		RepoDigests []string `json:"repoDigests"`
		Size        uint64   `json:"size"`
		ImageSpec   any      `json:"imageSpec"`
	}{img.ID, img.RepoTags, img.RepoDigests, img.Size, img.Config}
	b, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	return map[string]string{"info": string(b)}, nil
}
