package image

import (
	"encoding/base64"
	"fmt"
	"strings"

	"go.podman.io/image/v5/types"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// Auth is registry credentials carried by one pull request.
type Auth struct {
	Username      string
	Password      string
	Auth          string // base64 "user:password", as in docker's config.json
	IdentityToken string
	RegistryToken string
}

// normalize decodes Auth into Username/Password; nil stays nil.
func (a *Auth) normalize() (*Auth, error) {
	if a == nil || (*a == Auth{}) {
		return nil, nil
	}
	out := *a
	if out.Auth != "" && out.Username == "" {
		raw, err := base64.StdEncoding.DecodeString(out.Auth)
		if err != nil {
			return nil, fmt.Errorf("%w: auth is not base64: %v", errdefs.ErrInvalidArgument, err)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return nil, fmt.Errorf("%w: auth must encode user:password", errdefs.ErrInvalidArgument)
		}
		out.Username, out.Password = user, pass
	}
	out.Auth = ""
	return &out, nil
}

// key identifies the credentials in the pull de-duplication key without
// keeping the secret in it: pulls with different credentials never share.
func (a *Auth) key() string {
	if a == nil {
		return ""
	}
	return fmt.Sprintf("%x", hashString(a.Username+"\x00"+a.Password+"\x00"+a.IdentityToken+"\x00"+a.RegistryToken))
}

func (a *Auth) apply(sys *types.SystemContext) {
	if a == nil {
		return
	}
	if a.RegistryToken != "" {
		sys.DockerBearerRegistryToken = a.RegistryToken
		return
	}
	sys.DockerAuthConfig = &types.DockerAuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		IdentityToken: a.IdentityToken,
	}
}
