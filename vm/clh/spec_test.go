package clh

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// specPath is api/clh/cloud-hypervisor.yaml, found from this file so the
// fake (running with cwd /) gets an absolute path.
func specPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "api", "clh", "cloud-hypervisor.yaml")
}

// contract checks requests and responses against our OpenAPI subset. It is
// stricter than the spec: objects take only the properties the spec names,
// so a misspelt or undocumented field the driver sends is a violation.
type contract struct {
	router routers.Router
}

func loadContract(path string) (*contract, error) {
	doc, err := openapi3.NewLoader().LoadFromFile(path)
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, s := range doc.Components.Schemas {
		closeObjects(s.Value, map[*openapi3.Schema]bool{})
	}
	r, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &contract{router: r}, nil
}

func closeObjects(s *openapi3.Schema, seen map[*openapi3.Schema]bool) {
	if s == nil || seen[s] {
		return
	}
	seen[s] = true
	if s.Type.Is("object") && len(s.Properties) > 0 && s.AdditionalProperties.Schema == nil {
		no := false
		s.AdditionalProperties.Has = &no
	}
	for _, p := range s.Properties {
		closeObjects(p.Value, seen)
	}
	if s.Items != nil {
		closeObjects(s.Items.Value, seen)
	}
}

// checkedRequest is a request that passed (or failed) the contract.
type checkedRequest struct {
	input *openapi3filter.RequestValidationInput
	// noBody: the operation takes no body, and CH rejects one.
	noBody bool
}

// checkRequest validates method, path and body of a request the fake got.
func (c *contract) checkRequest(req *http.Request, body []byte) (*checkedRequest, error) {
	// The router matches the server URL http://localhost/api/v1.
	req.URL.Scheme, req.URL.Host = "http", req.Host
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: not in the spec: %w", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		// Not RejectWhenRequestBodyNotSpecified: kin-openapi v0.142.0 applies it
		// to every body; noBody below does that check.
		Options: &openapi3filter.Options{MultiError: true},
	}
	cr := &checkedRequest{input: in, noBody: route.Operation.RequestBody == nil}
	if cr.noBody && (len(body) > 0 || req.ContentLength > 0) {
		return cr, fmt.Errorf("%s %s: body on a body-less operation", req.Method, req.URL.Path)
	}
	if !cr.noBody {
		// micro_http needs a Content-Length and knows only two media types.
		if req.ContentLength != int64(len(body)) || len(req.TransferEncoding) > 0 {
			return cr, fmt.Errorf("%s %s: body without a plain Content-Length", req.Method, req.URL.Path)
		}
		if ct := req.Header.Get("Content-Type"); ct != "application/json" {
			return cr, fmt.Errorf("%s %s: Content-Type %q", req.Method, req.URL.Path, ct)
		}
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		return cr, fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, oneLine(err))
	}
	return cr, nil
}

// checkResponse keeps the fake honest: its answers must follow the spec too.
func (c *contract) checkResponse(cr *checkedRequest, status int, header http.Header, body []byte) error {
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: cr.input, Status: status, Header: header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(body)
	if status == http.StatusNoContent || (status == http.StatusOK && len(body) == 0) {
		// CH labels empty answers application/json; nothing to validate.
		in.Options.ExcludeResponseBody = true
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		return fmt.Errorf("fake answered %d off-spec: %s", status, oneLine(err))
	}
	return nil
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }
