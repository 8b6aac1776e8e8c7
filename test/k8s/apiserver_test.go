package k8s

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// apiServer is the API server double kubelet talks to: with no API client
// kubelet builds no RuntimeClass manager and ignores runtimeClassName, so
// the test gives it one. It is a small in-memory object store over plain
// HTTP and JSON, for the resources kubelet's informers and loops use (the
// list below, from kubelet's requests at --v 2 and the kubelet/client-go
// sources): lists, watches (streaming lists too), and the writes kubelet
// makes (node registration, CSINode, its lease, events, mirror pods), kept
// as kubelet wrote them so its informers read them back. Everything else is
// a 404 Status, and every request is recorded so a failure can show them.
//
// What it does not do, on purpose: authentication, admission, defaulting,
// validation. Strategic merge patches (kubelet's node and pod status) it
// applies without the types' schemas, from the directives kubelet's patches
// carry (strategicMerge).
type apiServer struct {
	srv  *http.Server
	addr string
	done chan struct{} // closed by close: ends the open watches

	mu      sync.Mutex
	rv      int64                     // the last resourceVersion handed out
	objects map[string]map[string]any // by objectKey
	log     []watchEvent              // every change, in resourceVersion order
	changed chan struct{}             // closed and replaced on every change
	reqs    map[string]int            // "METHOD /path" -> count
	misses  []string                  // requests answered 404 for an unknown resource
}

// apiResource is a resource the double serves.
type apiResource struct {
	group, version, plural, kind string
	namespaced                   bool
}

func (r apiResource) groupVersion() string {
	if r.group == "" {
		return r.version
	}
	return r.group + "/" + r.version
}

// apiResources are what kubelet v1.36 asks for with an API client and the
// test's configuration: its node and the pods bound to it (the API pod
// source), services (pod environment variables), RuntimeClasses (the
// reason for the double), CSIDrivers and its CSINode (the CSI plugin:
// kubelet exits when it cannot create its CSINode), its lease (heartbeat)
// and events.
var apiResources = []apiResource{
	{"", "v1", "nodes", "Node", false},
	{"", "v1", "pods", "Pod", true},
	{"", "v1", "services", "Service", true},
	{"", "v1", "events", "Event", true},
	{"coordination.k8s.io", "v1", "leases", "Lease", true},
	{"storage.k8s.io", "v1", "csinodes", "CSINode", false},
	{"storage.k8s.io", "v1", "csidrivers", "CSIDriver", false},
	{"node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", false},
}

type watchEvent struct {
	rv     int64
	res    string // plural
	typ    string // ADDED, MODIFIED, DELETED
	object map[string]any
}

// startAPIServer serves the double on a free port of 127.0.0.1; seed are
// objects it holds from the start, each with its resource's plural.
func startAPIServer(seed map[string][]map[string]any) (*apiServer, error) {
	s := &apiServer{
		done:    make(chan struct{}),
		objects: map[string]map[string]any{},
		changed: make(chan struct{}),
		reqs:    map[string]int{},
	}
	for plural, objs := range seed {
		res, ok := resourceByPlural(plural)
		if !ok {
			return nil, fmt.Errorf("no resource %q in the double", plural)
		}
		for _, o := range objs {
			if _, st := s.create(res, "", o); st != nil {
				return nil, fmt.Errorf("seeding %s: %s", plural, st["message"])
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = l.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

func (s *apiServer) close() {
	close(s.done)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}

// kubeconfig points a client at the double over plain HTTP, with no
// credentials (the double asks for none).
func (s *apiServer) kubeconfig() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: double
  cluster:
    server: http://%s
users:
- name: kubelet
  user: {}
contexts:
- name: double
  context:
    cluster: double
    user: kubelet
current-context: double
`, s.addr)
}

// requests lists what was asked, "METHOD /path xN", sorted, with object
// names kept (they say which node, lease or pod).
func (s *apiServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.reqs))
	for k, n := range s.reqs {
		out = append(out, fmt.Sprintf("%s x%d", k, n))
	}
	sort.Strings(out)
	return out
}

// unknown lists the requests answered 404 because the double has no such
// resource.
func (s *apiServer) unknown() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.misses...)
}

// object returns a copy of the stored object, or nil.
func (s *apiServer) object(plural, namespace, name string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objects[objectKey(plural, namespace, name)]
	if o == nil {
		return nil
	}
	return deepCopy(o)
}

func resourceByPlural(plural string) (apiResource, bool) {
	for _, r := range apiResources {
		if r.plural == plural {
			return r, true
		}
	}
	return apiResource{}, false
}

func objectKey(plural, namespace, name string) string {
	return plural + "/" + namespace + "/" + name
}

// apiPath is a request path taken apart.
type apiPath struct {
	res         apiResource
	namespace   string // "" for cluster-scoped, or a namespaced list across all
	name        string // "" for a collection
	subresource string
}

// parsePath reads /api/v1/... and /apis/<group>/<version>/... paths:
// [namespaces/<ns>/]<plural>[/<name>[/<subresource>]].
func parsePath(p string) (apiPath, bool) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	var group, version string
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		version, parts = parts[1], parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		group, version, parts = parts[1], parts[2], parts[3:]
	default:
		return apiPath{}, false
	}
	var ap apiPath
	if len(parts) >= 3 && parts[0] == "namespaces" {
		ap.namespace, parts = parts[1], parts[2:]
	}
	if len(parts) < 1 || len(parts) > 3 {
		return apiPath{}, false
	}
	found := false
	for _, r := range apiResources {
		if r.group == group && r.version == version && r.plural == parts[0] {
			ap.res, found = r, true
		}
	}
	if !found || (ap.namespace != "" && !ap.res.namespaced) {
		return apiPath{}, false
	}
	if len(parts) > 1 {
		ap.name = parts[1]
		if ap.res.namespaced && ap.namespace == "" {
			return apiPath{}, false // a namespaced object needs its namespace
		}
	}
	if len(parts) > 2 {
		ap.subresource = parts[2]
		if ap.subresource != "status" {
			return apiPath{}, false
		}
	}
	return ap, true
}

func (s *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	verb := r.Method
	if verb == http.MethodGet && (q.Get("watch") == "true" || q.Get("watch") == "1") {
		verb = "WATCH"
	}
	key := verb + " " + r.URL.Path
	if sel := q.Get("fieldSelector"); sel != "" {
		key += "?fieldSelector=" + sel
	}
	s.mu.Lock()
	s.reqs[key]++
	s.mu.Unlock()

	ap, ok := parsePath(r.URL.Path)
	if !ok {
		s.mu.Lock()
		s.misses = append(s.misses, key)
		s.mu.Unlock()
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource", nil)
		return
	}
	var body map[string]any
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		data, err := io.ReadAll(r.Body)
		if err == nil {
			err = json.Unmarshal(data, &body)
		}
		if err != nil || body == nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", fmt.Sprintf("the body is not a JSON object: %v", err), nil)
			return
		}
	}
	var obj, st map[string]any
	code := http.StatusOK
	switch {
	case verb == "WATCH" && ap.name == "":
		s.watch(w, r, ap)
		return
	case verb == http.MethodGet && ap.name == "":
		obj, st = s.list(ap, q.Get("fieldSelector"), q.Get("labelSelector"))
	case verb == http.MethodGet:
		obj, st = s.get(ap)
	case verb == http.MethodPost && ap.name == "" && ap.subresource == "":
		obj, st = s.create(ap.res, ap.namespace, body)
		code = http.StatusCreated
	case verb == http.MethodPut && ap.name != "":
		obj, st = s.update(ap, body)
	case verb == http.MethodPatch && ap.name != "":
		obj, st = s.patch(ap, r.Header.Get("Content-Type"), body)
	case verb == http.MethodDelete && ap.name != "" && ap.subresource == "":
		obj, st = s.delete(ap, r.Body)
	default:
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", fmt.Sprintf("%s is not supported on %s", r.Method, r.URL.Path), nil)
		return
	}
	if st != nil {
		writeJSON(w, int(st["code"].(int)), st)
		return
	}
	writeJSON(w, code, obj)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code, data = http.StatusInternalServerError, []byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","code":500}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(data)
}

func writeStatus(w http.ResponseWriter, code int, reason, message string, details map[string]any) {
	writeJSON(w, code, status(code, reason, message, details))
}

// status is a metav1.Status failure, which client-go turns into the
// matching apierrors (IsNotFound, IsAlreadyExists, IsConflict).
func status(code int, reason, message string, details map[string]any) map[string]any {
	st := map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": message, "reason": reason, "code": code,
	}
	if details != nil {
		st["details"] = details
	}
	return st
}

func notFound(ap apiPath) map[string]any {
	return status(http.StatusNotFound, "NotFound", fmt.Sprintf("%s %q not found", ap.res.plural, ap.name),
		map[string]any{"name": ap.name, "group": ap.res.group, "kind": ap.res.plural})
}

func (s *apiServer) list(ap apiPath, fieldSel, labelSel string) (map[string]any, map[string]any) {
	match, err := selector(fieldSel, labelSel)
	if err != nil {
		return nil, status(http.StatusBadRequest, "BadRequest", err.Error(), nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	items := []any{}
	for _, o := range s.sorted(ap.res.plural, ap.namespace) {
		if match(o) {
			items = append(items, deepCopy(o))
		}
	}
	return map[string]any{
		"kind": ap.res.kind + "List", "apiVersion": ap.res.groupVersion(),
		"metadata": map[string]any{"resourceVersion": strconv.FormatInt(s.rv, 10)},
		"items":    items,
	}, nil
}

// sorted lists the stored objects of a resource (in a namespace, or all),
// in name order. Call with mu held.
func (s *apiServer) sorted(plural, namespace string) []map[string]any {
	var keys []string
	prefix := plural + "/"
	if namespace != "" {
		prefix += namespace + "/"
	}
	for k := range s.objects {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, s.objects[k])
	}
	return out
}

func (s *apiServer) get(ap apiPath) (map[string]any, map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objects[objectKey(ap.res.plural, ap.namespace, ap.name)]
	if o == nil {
		return nil, notFound(ap)
	}
	return deepCopy(o), nil
}

// create stores a new object as the real server would: in the path's
// namespace, named by metadata.name or generateName, with a uid, a
// resourceVersion and a creation time.
func (s *apiServer) create(res apiResource, namespace string, obj map[string]any) (map[string]any, map[string]any) {
	obj = deepCopy(obj)
	md, _ := obj["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		obj["metadata"] = md
	}
	if res.namespaced {
		if namespace == "" {
			namespace, _ = md["namespace"].(string)
		}
		if namespace == "" {
			namespace = "default"
		}
		md["namespace"] = namespace
	}
	name, _ := md["name"].(string)
	if gen, _ := md["generateName"].(string); name == "" && gen != "" {
		name = gen + randomHex(5)
		md["name"] = name
	}
	if name == "" {
		return nil, status(http.StatusUnprocessableEntity, "Invalid", "metadata.name: Required value", nil)
	}
	obj["kind"], obj["apiVersion"] = res.kind, res.groupVersion()
	s.mu.Lock()
	defer s.mu.Unlock()
	key := objectKey(res.plural, namespace, name)
	if s.objects[key] != nil {
		return nil, status(http.StatusConflict, "AlreadyExists", fmt.Sprintf("%s %q already exists", res.plural, name),
			map[string]any{"name": name, "group": res.group, "kind": res.plural})
	}
	md["uid"] = newUID()
	md["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
	s.store(res.plural, key, "ADDED", obj)
	return deepCopy(obj), nil
}

// update replaces an object (its status only, for /status), refusing a
// stale resourceVersion as the real server does.
func (s *apiServer) update(ap apiPath, obj map[string]any) (map[string]any, map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updateLocked(ap, obj)
}

func (s *apiServer) updateLocked(ap apiPath, obj map[string]any) (map[string]any, map[string]any) {
	key := objectKey(ap.res.plural, ap.namespace, ap.name)
	old := s.objects[key]
	if old == nil {
		return nil, notFound(ap)
	}
	md, _ := obj["metadata"].(map[string]any)
	oldMD := old["metadata"].(map[string]any)
	if rv, _ := md["resourceVersion"].(string); rv != "" && rv != oldMD["resourceVersion"] {
		return nil, status(http.StatusConflict, "Conflict", fmt.Sprintf("Operation cannot be fulfilled on %s %q: the object has been modified; please apply your changes to the latest version and try again", ap.res.plural, ap.name),
			map[string]any{"name": ap.name, "group": ap.res.group, "kind": ap.res.plural})
	}
	next := deepCopy(obj)
	if ap.subresource == "status" {
		next = deepCopy(old)
		next["status"] = deepCopy(obj)["status"]
	}
	nmd, _ := next["metadata"].(map[string]any)
	if nmd == nil {
		nmd = map[string]any{}
		next["metadata"] = nmd
	}
	// Identity is the server's, whatever the client sent.
	for _, k := range []string{"name", "namespace", "uid", "creationTimestamp"} {
		if v, ok := oldMD[k]; ok {
			nmd[k] = v
		}
	}
	next["kind"], next["apiVersion"] = ap.res.kind, ap.res.groupVersion()
	s.store(ap.res.plural, key, "MODIFIED", next)
	return deepCopy(next), nil
}

// patch applies a JSON merge patch, or a strategic merge patch (kubelet's
// node and pod status, event counts) as far as strategicMerge knows them,
// to the current object; a uid in the patch is a precondition, as kubelet
// uses it for pod status.
func (s *apiServer) patch(ap apiPath, contentType string, p map[string]any) (map[string]any, map[string]any) {
	var apply func(old map[string]any) map[string]any
	switch ct, _, _ := strings.Cut(contentType, ";"); ct {
	case "application/merge-patch+json":
		apply = func(old map[string]any) map[string]any { return mergePatch(old, p).(map[string]any) }
	case "application/strategic-merge-patch+json":
		apply = func(old map[string]any) map[string]any { return strategicMerge(old, p) }
	default:
		return nil, status(http.StatusUnsupportedMediaType, "UnsupportedMediaType", "the double applies merge and strategic merge patches only, not "+contentType, nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.objects[objectKey(ap.res.plural, ap.namespace, ap.name)]
	if old == nil {
		return nil, notFound(ap)
	}
	oldMD := old["metadata"].(map[string]any)
	pmd, _ := p["metadata"].(map[string]any)
	if uid, _ := pmd["uid"].(string); uid != "" && uid != oldMD["uid"] {
		return nil, status(http.StatusConflict, "Conflict", fmt.Sprintf("Precondition failed: UID in precondition: %s, UID in object meta: %s", uid, oldMD["uid"]),
			map[string]any{"name": ap.name, "group": ap.res.group, "kind": ap.res.plural})
	}
	next := apply(deepCopy(old))
	// The patch applies to the current version unless it names another,
	// which updateLocked then refuses.
	nmd, _ := next["metadata"].(map[string]any)
	if nmd == nil {
		nmd = map[string]any{}
		next["metadata"] = nmd
	}
	if rv, _ := pmd["resourceVersion"].(string); rv == "" {
		nmd["resourceVersion"] = oldMD["resourceVersion"]
	}
	return s.updateLocked(ap, next)
}

// strategicMerge applies what kubelet's strategic merge patches use (the
// output of apimachinery's CreateTwoWayMergePatch for nodes, pods and
// events) without the types' schemas: maps merge and null deletes; a list
// merges by key where the patch carries its "$setElementOrder/<list>"
// directive (which the patch has for every merging list it changes, its
// elements holding the merge key alone), its "$patch: delete" elements
// removing by key, and any other list is replaced; "$retainKeys" and
// "$deleteFromPrimitiveList/<list>" do what they say.
func strategicMerge(orig, patch map[string]any) map[string]any {
	if orig == nil {
		orig = map[string]any{}
	}
	if patch["$patch"] == "replace" {
		return withoutDirectives(patch)
	}
	if keep, ok := patch["$retainKeys"].([]any); ok {
		for k := range orig {
			if !containsValue(keep, k) {
				delete(orig, k)
			}
		}
	}
	for k, v := range patch {
		if field, ok := strings.CutPrefix(k, "$deleteFromPrimitiveList/"); ok {
			list, _ := orig[field].([]any)
			var kept []any
			for _, e := range list {
				if !containsValue(v.([]any), e) {
					kept = append(kept, e)
				}
			}
			orig[field] = kept
			continue
		}
		if field, ok := strings.CutPrefix(k, "$setElementOrder/"); ok {
			if _, changed := patch[field]; !changed { // an order change alone
				list, _ := orig[field].([]any)
				orig[field] = mergeList(list, nil, v.([]any))
			}
			continue
		}
		if strings.HasPrefix(k, "$") {
			continue
		}
		switch pv := v.(type) {
		case nil:
			delete(orig, k)
		case map[string]any:
			if pv["$patch"] == "delete" {
				delete(orig, k)
				continue
			}
			om, _ := orig[k].(map[string]any)
			orig[k] = strategicMerge(om, pv)
		case []any:
			if order, merging := patch["$setElementOrder/"+k].([]any); merging {
				list, _ := orig[k].([]any)
				orig[k] = mergeList(list, pv, order)
			} else {
				orig[k] = pv
			}
		default:
			orig[k] = v
		}
	}
	return orig
}

// mergeList merges patch's elements into list by the merge key that
// order's elements hold, then orders the result as order says, elements
// order does not name after them in their old order. Primitive lists
// (order of plain values) are a union.
func mergeList(list, patch, order []any) []any {
	key := ""
	if len(order) > 0 {
		if m, ok := order[0].(map[string]any); ok {
			for k := range m {
				key = k
			}
		}
	}
	id := func(e any) string {
		if m, ok := e.(map[string]any); ok && key != "" {
			return fmt.Sprint(m[key])
		}
		return fmt.Sprint(e)
	}
	byID := map[string]any{}
	var ids []string
	for _, e := range list {
		if _, dup := byID[id(e)]; !dup {
			ids = append(ids, id(e))
		}
		byID[id(e)] = e
	}
	for _, e := range patch {
		i := id(e)
		m, isMap := e.(map[string]any)
		switch {
		case isMap && m["$patch"] == "delete":
			delete(byID, i)
		case isMap:
			old, _ := byID[i].(map[string]any)
			if old == nil {
				ids = append(ids, i)
			}
			byID[i] = strategicMerge(old, m)
		default:
			if _, ok := byID[i]; !ok {
				ids = append(ids, i)
			}
			byID[i] = e
		}
	}
	out := []any{}
	placed := map[string]bool{}
	for _, o := range order {
		if e, ok := byID[id(o)]; ok && !placed[id(o)] {
			out = append(out, e)
			placed[id(o)] = true
		}
	}
	for _, i := range ids {
		if e, ok := byID[i]; ok && !placed[i] {
			out = append(out, e)
			placed[i] = true
		}
	}
	return out
}

func withoutDirectives(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		if !strings.HasPrefix(k, "$") {
			out[k] = v
		}
	}
	return out
}

func containsValue(list []any, v any) bool {
	for _, e := range list {
		if fmt.Sprint(e) == fmt.Sprint(v) {
			return true
		}
	}
	return false
}

// delete removes an object, honouring a uid or resourceVersion
// precondition (kubelet deletes mirror pods by uid).
func (s *apiServer) delete(ap apiPath, body io.Reader) (map[string]any, map[string]any) {
	var opts struct {
		Preconditions struct {
			UID             string `json:"uid"`
			ResourceVersion string `json:"resourceVersion"`
		} `json:"preconditions"`
	}
	if data, _ := io.ReadAll(body); len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, &opts); err != nil {
			return nil, status(http.StatusBadRequest, "BadRequest", "delete options: "+err.Error(), nil)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := objectKey(ap.res.plural, ap.namespace, ap.name)
	old := s.objects[key]
	if old == nil {
		return nil, notFound(ap)
	}
	md := old["metadata"].(map[string]any)
	if p := opts.Preconditions; (p.UID != "" && p.UID != md["uid"]) || (p.ResourceVersion != "" && p.ResourceVersion != md["resourceVersion"]) {
		return nil, status(http.StatusConflict, "Conflict", fmt.Sprintf("Precondition failed for %s %q", ap.res.plural, ap.name),
			map[string]any{"name": ap.name, "group": ap.res.group, "kind": ap.res.plural})
	}
	delete(s.objects, key)
	s.rv++
	gone := deepCopy(old)
	gone["metadata"].(map[string]any)["resourceVersion"] = strconv.FormatInt(s.rv, 10)
	s.record(ap.res.plural, "DELETED", gone)
	return deepCopy(gone), nil
}

// store saves obj under key with the next resourceVersion and logs the
// change. Call with mu held.
func (s *apiServer) store(plural, key, typ string, obj map[string]any) {
	s.rv++
	obj["metadata"].(map[string]any)["resourceVersion"] = strconv.FormatInt(s.rv, 10)
	s.objects[key] = obj
	s.record(plural, typ, deepCopy(obj))
}

func (s *apiServer) record(plural, typ string, obj map[string]any) {
	s.log = append(s.log, watchEvent{rv: s.rv, res: plural, typ: typ, object: obj})
	close(s.changed)
	s.changed = make(chan struct{})
}

// watch streams a collection's changes after the request's
// resourceVersion, one JSON watch event a line, until the client goes,
// timeoutSeconds pass or the double closes. A streaming list
// (sendInitialEvents=true, client-go's default since 1.35) first gets the
// current objects as ADDED and then the bookmark that ends them; a watch
// from "" or "0" gets the current objects as ADDED too, as from the real
// server.
func (s *apiServer) watch(w http.ResponseWriter, r *http.Request, ap apiPath) {
	q := r.URL.Query()
	match, err := selector(q.Get("fieldSelector"), q.Get("labelSelector"))
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error(), nil)
		return
	}
	var timeout <-chan time.Time
	if secs, err := strconv.Atoi(q.Get("timeoutSeconds")); err == nil && secs > 0 {
		t := time.NewTimer(time.Duration(secs) * time.Second)
		defer t.Stop()
		timeout = t.C
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(typ string, obj map[string]any) bool {
		return enc.Encode(map[string]any{"type": typ, "object": obj}) == nil
	}

	s.mu.Lock()
	from, _ := strconv.ParseInt(q.Get("resourceVersion"), 10, 64)
	var initial []map[string]any
	initialEvents := q.Get("sendInitialEvents") == "true"
	if initialEvents || from == 0 {
		for _, o := range s.sorted(ap.res.plural, ap.namespace) {
			if match(o) {
				initial = append(initial, deepCopy(o))
			}
		}
		from = s.rv
	}
	s.mu.Unlock()
	for _, o := range initial {
		if !send("ADDED", o) {
			return
		}
	}
	if initialEvents {
		bookmark := map[string]any{"kind": ap.res.kind, "apiVersion": ap.res.groupVersion(), "metadata": map[string]any{
			"resourceVersion": strconv.FormatInt(from, 10),
			"annotations":     map[string]any{"k8s.io/initial-events-end": "true"},
		}}
		if !send("BOOKMARK", bookmark) {
			return
		}
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		s.mu.Lock()
		var events []watchEvent
		for _, e := range s.log {
			if e.rv > from && e.res == ap.res.plural && (ap.namespace == "" || e.object["metadata"].(map[string]any)["namespace"] == ap.namespace) && match(e.object) {
				events = append(events, e)
			}
		}
		from = s.rv
		changed := s.changed
		s.mu.Unlock()
		for _, e := range events {
			if !send(e.typ, deepCopy(e.object)) {
				return
			}
		}
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-changed:
		case <-timeout:
			return
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
}

// selector builds a matcher from field and label selectors of the forms
// kubelet uses: comma-separated key=value, key==value and key!=value terms,
// field keys as dotted paths into the object.
func selector(fieldSel, labelSel string) (func(map[string]any) bool, error) {
	type term struct {
		path  []string
		value string
		not   bool
	}
	var terms []term
	parse := func(sel string, prefix []string) error {
		for _, t := range strings.Split(sel, ",") {
			if t = strings.TrimSpace(t); t == "" {
				continue
			}
			var tm term
			var k string
			switch {
			case strings.Contains(t, "!="):
				k, tm.value, _ = strings.Cut(t, "!=")
				tm.not = true
			case strings.Contains(t, "=="):
				k, tm.value, _ = strings.Cut(t, "==")
			case strings.Contains(t, "="):
				k, tm.value, _ = strings.Cut(t, "=")
			default:
				return fmt.Errorf("the double does not support the selector term %q", t)
			}
			if prefix != nil {
				tm.path = append(append([]string(nil), prefix...), k) // a label key may hold dots
			} else {
				tm.path = strings.Split(k, ".")
			}
			terms = append(terms, tm)
		}
		return nil
	}
	if err := parse(fieldSel, nil); err != nil {
		return nil, err
	}
	if err := parse(labelSel, []string{"metadata", "labels"}); err != nil {
		return nil, err
	}
	return func(o map[string]any) bool {
		for _, t := range terms {
			var v any = o
			for _, p := range t.path {
				m, _ := v.(map[string]any)
				v = m[p]
			}
			s, _ := v.(string)
			if (s == t.value) == t.not {
				return false
			}
		}
		return true
	}, nil
}

// mergePatch applies an RFC 7386 JSON merge patch.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
		} else {
			t[k] = mergePatch(t[k], v)
		}
	}
	return t
}

func deepCopy(o map[string]any) map[string]any {
	data, err := json.Marshal(o)
	if err != nil {
		panic(err) // only JSON-decoded values are ever stored
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		panic(err)
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return fmt.Sprintf("%x", b)[:n]
}

func newUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// writeKubeconfig writes the double's kubeconfig to path.
func (s *apiServer) writeKubeconfig(path string) error {
	return os.WriteFile(path, []byte(s.kubeconfig()), 0o600)
}
