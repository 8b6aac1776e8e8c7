package cri

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// Request validation runs before any work: a malformed request must come back
// as InvalidArgument naming the field, never reach CNI, storage or a VM and
// come back as Unknown. The rules follow Kubernetes' where kubelet and critest
// (v1.36.0) stay inside them, and are looser where they do not (see names).

const (
	// maxNameLen bounds pod and container names. Kubernetes allows a DNS
	// subdomain (253) for pod names and a DNS label (63) for container names,
	// but critest names containers "container-with-RunAsGroup-without-RunAsUser-test-<uuid>"
	// (85 characters), so both get the subdomain bound.
	maxNameLen = 253
	// maxNamespaceLen is a DNS label: every namespace kubelet or critest
	// ("cri-test-namespace<uuid>", 54) sends fits.
	maxNamespaceLen = 63
	// maxUIDLen: kubelet sends a UUID (36) or a static pod's hash (32),
	// critest "cri-test-uid<uuid>" (48).
	maxUIDLen = 128
	// maxAttempt: kubelet's attempt is a restart count, an int32 in the API.
	maxAttempt = 1<<31 - 1
	// maxMetaBytes bounds the total size of labels, and of annotations: the
	// API server caps a pod's annotations at 256 KiB; kubelet adds its own
	// (config.seen, container hash, ports as JSON) on top, hence the headroom.
	maxMetaBytes = 256<<10 + 64<<10
	// maxMetaKeyLen is a qualified name: a 253-character prefix, '/', 63 characters.
	maxMetaKeyLen = 253 + 1 + 63
	maxPathLen    = 4096 // PATH_MAX
	// cgroup v1/v2 ranges kubelet itself converts into (pkg/kubelet/cm).
	minCPUShares, maxCPUShares = 2, 262144
	minCPUPeriod, maxCPUPeriod = 1000, 1000000
	minCPUQuota                = 1000
	maxCPUQuota                = 1<<44 - 1 // the kernel's max_cfs_runtime, in µs
	maxCPUIndex                = 8191      // the kernel's largest NR_CPUS
	maxUnifiedKeys             = 64
	maxUnifiedValueLen         = 4096
)

// nameRE is the character set of Kubernetes names (DNS subdomain) widened to
// uppercase: critest names pods "PodSandbox-for-multi-container-test-<uuid>".
// It still refuses '/', '_' (the registrar joins names with it), NUL, control
// characters, spaces, and "." or ".." (a name must start and end alphanumeric).
var nameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// unifiedKeyRE is a cgroup v2 interface file name ("memory.high",
// "hugetlb.2MB.max"): no '/' and no "..", so it cannot leave the cgroup.
var unifiedKeyRE = regexp.MustCompile(`^[a-z]+(\.[A-Za-z0-9_]+)+$`)

// hugepageSizeRE is the page size as kubelet writes it: "2MB", "1GB", "64KB".
var hugepageSizeRE = regexp.MustCompile(`^[1-9][0-9]{0,5}(KB|MB|GB|TB|PB)$`)

func fieldInvalid(field, format string, args ...any) error {
	return invalid("%s: %s", field, fmt.Sprintf(format, args...))
}

func validateName(field, v string, max int) error {
	switch {
	case v == "":
		return fieldInvalid(field, "is required")
	case len(v) > max:
		return fieldInvalid(field, "must be at most %d characters", max)
	case !nameRE.MatchString(v):
		return fieldInvalid(field, "%.100q must be letters, digits, '-' and '.', starting and ending with a letter or digit", v)
	}
	return nil
}

func validateAttempt(field string, a uint32) error {
	if a > maxAttempt {
		return fieldInvalid(field, "must be at most %d", maxAttempt)
	}
	return nil
}

// validatePodSandboxConfig checks what RunPodSandbox acts on.
func validatePodSandboxConfig(field string, c *runtimeapi.PodSandboxConfig) error {
	if c == nil {
		return fieldInvalid(field, "is required")
	}
	md := c.GetMetadata()
	if md == nil {
		return fieldInvalid(field+".metadata", "is required")
	}
	if err := validateName(field+".metadata.name", md.GetName(), maxNameLen); err != nil {
		return err
	}
	if err := validateName(field+".metadata.namespace", md.GetNamespace(), maxNamespaceLen); err != nil {
		return err
	}
	if err := validateName(field+".metadata.uid", md.GetUid(), maxUIDLen); err != nil {
		return err
	}
	if err := validateAttempt(field+".metadata.attempt", md.GetAttempt()); err != nil {
		return err
	}
	if d := c.GetLogDirectory(); d != "" {
		if err := validateAbsPath(field+".log_directory", d); err != nil {
			return err
		}
	}
	for i, p := range c.GetPortMappings() {
		f := fmt.Sprintf("%s.port_mappings[%d]", field, i)
		if p.GetContainerPort() < 0 || p.GetContainerPort() > 65535 {
			return fieldInvalid(f+".container_port", "%d is not a port", p.GetContainerPort())
		}
		if p.GetHostPort() < 0 || p.GetHostPort() > 65535 {
			return fieldInvalid(f+".host_port", "%d is not a port", p.GetHostPort())
		}
	}
	if err := validateMeta(field+".labels", c.GetLabels()); err != nil {
		return err
	}
	if err := validateMeta(field+".annotations", c.GetAnnotations()); err != nil {
		return err
	}
	if err := validateResources(field+".linux.overhead", c.GetLinux().GetOverhead()); err != nil {
		return err
	}
	return validateResources(field+".linux.resources", c.GetLinux().GetResources())
}

// validateContainerConfig checks what CreateContainer acts on, short of what
// needs the pod (containerLogDir, the privileged check).
func validateContainerConfig(field string, c *runtimeapi.ContainerConfig) error {
	if c == nil {
		return fieldInvalid(field, "is required")
	}
	md := c.GetMetadata()
	if md == nil {
		return fieldInvalid(field+".metadata", "is required")
	}
	if err := validateName(field+".metadata.name", md.GetName(), maxNameLen); err != nil {
		return err
	}
	if err := validateAttempt(field+".metadata.attempt", md.GetAttempt()); err != nil {
		return err
	}
	if c.GetImage().GetImage() == "" {
		return fieldInvalid(field+".image.image", "is required")
	}
	// execve takes NUL-terminated strings, and an environment entry is
	// key=value: such requests could only fail later, inside the guest.
	for i, a := range c.GetCommand() {
		if strings.IndexByte(a, 0) >= 0 {
			return fieldInvalid(fmt.Sprintf("%s.command[%d]", field, i), "must not contain NUL")
		}
	}
	for i, a := range c.GetArgs() {
		if strings.IndexByte(a, 0) >= 0 {
			return fieldInvalid(fmt.Sprintf("%s.args[%d]", field, i), "must not contain NUL")
		}
	}
	for i, kv := range c.GetEnvs() {
		f := fmt.Sprintf("%s.envs[%d]", field, i)
		switch k := kv.GetKey(); {
		case k == "":
			return fieldInvalid(f+".key", "is required")
		case strings.ContainsAny(k, "=\x00"):
			return fieldInvalid(f+".key", "%.40q must not contain '=' or NUL", k)
		case bytes.IndexByte(kv.GetValue(), 0) >= 0:
			return fieldInvalid(f+".value", "must not contain NUL")
		}
	}
	if p := c.GetLogPath(); p != "" {
		if err := validateLogPath(field+".log_path", p); err != nil {
			return err
		}
	}
	if err := validateMeta(field+".labels", c.GetLabels()); err != nil {
		return err
	}
	if err := validateMeta(field+".annotations", c.GetAnnotations()); err != nil {
		return err
	}
	return validateResources(field+".linux.resources", c.GetLinux().GetResources())
}

func validateAbsPath(field, p string) error {
	switch {
	case len(p) > maxPathLen:
		return fieldInvalid(field, "must be at most %d characters", maxPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return fieldInvalid(field, "must not contain NUL")
	case !filepath.IsAbs(p):
		return fieldInvalid(field, "%.200q must be absolute", p)
	case filepath.Clean(p) != p:
		return fieldInvalid(field, "%.200q must be clean (%.200q)", p, filepath.Clean(p))
	}
	return nil
}

// validateLogPath keeps a container's log inside its pod's log directory:
// relative, clean, and not climbing out with "..".
func validateLogPath(field, p string) error {
	switch {
	case len(p) > maxPathLen:
		return fieldInvalid(field, "must be at most %d characters", maxPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return fieldInvalid(field, "must not contain NUL")
	case filepath.IsAbs(p):
		return fieldInvalid(field, "%.200q must be relative to the pod's log_directory", p)
	case filepath.Clean(p) != p:
		return fieldInvalid(field, "%.200q must be clean (%.200q)", p, filepath.Clean(p))
	case p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return fieldInvalid(field, "%.200q must stay inside the pod's log_directory", p)
	}
	return nil
}

// validateMeta bounds labels and annotations: keys non-empty qualified-name
// sized, no NUL anywhere, and the whole map within maxMetaBytes. Values are not
// held to Kubernetes' 63-character label rule: kubelet puts the pod's name
// (up to 253) in the io.kubernetes.pod.name label.
func validateMeta(field string, m map[string]string) error {
	total := 0
	for k, v := range m {
		switch {
		case k == "":
			return fieldInvalid(field, "empty key")
		case len(k) > maxMetaKeyLen:
			return fieldInvalid(field, "key %.40q... must be at most %d characters", k, maxMetaKeyLen)
		case strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0:
			return fieldInvalid(field, "key %.40q: must not contain NUL", k)
		}
		total += len(k) + len(v)
	}
	if total > maxMetaBytes {
		return fieldInvalid(field, "total size %d must be at most %d bytes", total, maxMetaBytes)
	}
	return nil
}

// validateResources refuses negative or absurd limits before they reach the
// VM sizing and the guest's cgroups. nil is fine (no limits).
func validateResources(field string, r *runtimeapi.LinuxContainerResources) error {
	if r == nil {
		return nil
	}
	if p := r.GetCpuPeriod(); p != 0 && (p < minCPUPeriod || p > maxCPUPeriod) {
		return fieldInvalid(field+".cpu_period", "%d must be 0 or %d..%d", p, minCPUPeriod, maxCPUPeriod)
	}
	// -1 is cgroup v1's "no limit", which kubelet's converters may produce.
	if q := r.GetCpuQuota(); q != 0 && q != -1 && (q < minCPUQuota || q > maxCPUQuota) {
		return fieldInvalid(field+".cpu_quota", "%d must be 0, -1 or %d..%d", q, minCPUQuota, int64(maxCPUQuota))
	}
	if s := r.GetCpuShares(); s != 0 && (s < minCPUShares || s > maxCPUShares) {
		return fieldInvalid(field+".cpu_shares", "%d must be 0 or %d..%d", s, minCPUShares, maxCPUShares)
	}
	mem := r.GetMemoryLimitInBytes()
	if mem < 0 {
		return fieldInvalid(field+".memory_limit_in_bytes", "%d must not be negative", mem)
	}
	// memory+swap: -1 unlimited, 0 unset; else it includes the memory limit.
	if sw := r.GetMemorySwapLimitInBytes(); sw < -1 || (sw > 0 && mem > 0 && sw < mem) {
		return fieldInvalid(field+".memory_swap_limit_in_bytes", "%d must be -1, 0 or at least memory_limit_in_bytes (%d)", sw, mem)
	}
	if o := r.GetOomScoreAdj(); o < -1000 || o > 1000 {
		return fieldInvalid(field+".oom_score_adj", "%d must be within -1000..1000", o)
	}
	if err := validateCpuset(field+".cpuset_cpus", r.GetCpusetCpus()); err != nil {
		return err
	}
	if err := validateCpuset(field+".cpuset_mems", r.GetCpusetMems()); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, h := range r.GetHugepageLimits() {
		f := fmt.Sprintf("%s.hugepage_limits[%d].page_size", field, i)
		if !hugepageSizeRE.MatchString(h.GetPageSize()) {
			return fieldInvalid(f, "%.40q must be a size such as 2MB or 1GB", h.GetPageSize())
		}
		if seen[h.GetPageSize()] {
			return fieldInvalid(f, "%q is listed twice", h.GetPageSize())
		}
		seen[h.GetPageSize()] = true
	}
	if len(r.GetUnified()) > maxUnifiedKeys {
		return fieldInvalid(field+".unified", "at most %d keys", maxUnifiedKeys)
	}
	for k, v := range r.GetUnified() {
		if len(k) > 255 || !unifiedKeyRE.MatchString(k) {
			return fieldInvalid(field+".unified", "key %.40q is not a cgroup file name", k)
		}
		if len(v) > maxUnifiedValueLen || strings.ContainsAny(v, "\x00\n") {
			return fieldInvalid(field+".unified", "value of %.40q must be one line of at most %d bytes", k, maxUnifiedValueLen)
		}
	}
	return nil
}

// validateCpuset checks cgroup list syntax: "0-3,5,7-8", ascending ranges of
// indexes no larger than the kernel's NR_CPUS.
func validateCpuset(field, s string) error {
	if s == "" {
		return nil
	}
	if len(s) > 4096 {
		return fieldInvalid(field, "must be at most 4096 characters")
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := cpuIndex(lo)
		if err != nil {
			return fieldInvalid(field, "%.40q: %v", s, err)
		}
		b := a
		if isRange {
			if b, err = cpuIndex(hi); err != nil {
				return fieldInvalid(field, "%.40q: %v", s, err)
			}
		}
		if b < a {
			return fieldInvalid(field, "%.40q: range %s is reversed", s, part)
		}
	}
	return nil
}

func cpuIndex(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%.20q is not an index", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > maxCPUIndex {
		return 0, fmt.Errorf("%.20q must be at most %d", s, maxCPUIndex)
	}
	return n, nil
}

// validateContainerInPod checks what needs the pod's record: privilege, and
// the directory the container's log goes to.
func validateContainerInPod(req *runtimeapi.CreateContainerRequest, pod *sandbox.Pod) error {
	// The pod's own record, not the request's sandbox_config, says whether
	// the sandbox is privileged: containerd and CRI-O refuse a privileged
	// container in a sandbox that is not.
	podCfg := pod.PodConfig()
	if req.GetConfig().GetLinux().GetSecurityContext().GetPrivileged() && !podCfg.GetLinux().GetSecurityContext().GetPrivileged() {
		return fieldInvalid("config.linux.security_context.privileged", "pod sandbox %s is not privileged", pod.ID)
	}
	// sandbox/ joins log_path to the request's sandbox_config log directory
	// when one is given, else to the pod's.
	logDir, logDirField := podCfg.GetLogDirectory(), "pod log_directory"
	if sc := req.GetSandboxConfig(); sc != nil {
		logDir, logDirField = sc.GetLogDirectory(), "sandbox_config.log_directory"
		if logDir != "" {
			if err := validateAbsPath(logDirField, logDir); err != nil {
				return err
			}
		}
	}
	// Joined to "" the log would land in cocoond's working directory.
	if req.GetConfig().GetLogPath() != "" && logDir == "" {
		return fieldInvalid("config.log_path", "is set but the %s is empty", logDirField)
	}
	return nil
}
