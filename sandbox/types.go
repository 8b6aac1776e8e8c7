package sandbox

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"sync/atomic"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/sandbox/podcgroup"
	"github.com/cocoon-runtime/cocoon/vm"
)

// Pod is a sandbox's persisted record.
type Pod struct {
	ID      string          `json:"id"`
	Name    string          `json:"name"` // registrar key: name_namespace_uid_attempt
	Config  json.RawMessage `json:"config"`
	Handler string          `json:"handler"`
	// Kind is the handler kind the pod runs as: "" or "vm" (a VM), or
	// "host" (containers on the host, run by a host-mode agent).
	Kind      string    `json:"kind,omitempty"`
	State     PodState  `json:"state"`
	Reason    string    `json:"reason,omitempty"` // why NOTREADY, when not stopped on request
	CreatedAt int64     `json:"createdAt"`
	RunDir    string    `json:"runDir"`
	ShareDir  string    `json:"shareDir"`
	NetnsPath string    `json:"netnsPath"`
	IPs       []string  `json:"ips,omitempty"`
	VM        *vm.State `json:"vm,omitempty"`
	// Cgroup is the pod's host cgroup, recorded before it is made.
	Cgroup *podcgroup.Ref `json:"cgroup,omitempty"`
	// CleanupPending says a stop or a failed run left something undone (or
	// is in progress): the next Stop/Remove, or a restart, finishes it.
	CleanupPending string `json:"cleanupPending,omitempty"`

	// config is Config decoded, once, when the store takes the record in
	// (see decodeConfigs); copies share it, so nobody may modify it.
	config *runtimeapi.PodSandboxConfig
}

func (p Pod) id() string { return p.ID }

// PodConfig is the CRI config the pod was created with, decoded when the
// record was added or loaded: it is shared, read it but do not modify it.
func (p *Pod) PodConfig() *runtimeapi.PodSandboxConfig {
	if p.config != nil {
		return p.config
	}
	return decodePodConfig(p.Config) // a record the store never saw (tests)
}

// Container is a container's persisted record.
type Container struct {
	ID         string          `json:"id"`
	PodID      string          `json:"podID"`
	Name       string          `json:"name"` // registrar key: pod id + container name + attempt
	Config     json.RawMessage `json:"config"`
	ImageID    string          `json:"imageID"`  // "sha256:<hex>", what ImageStatus calls Image.id
	ImageRef   string          `json:"imageRef"` // what the user asked for
	State      ContainerState  `json:"state"`
	CreatedAt  int64           `json:"createdAt"`
	StartedAt  int64           `json:"startedAt,omitempty"`
	FinishedAt int64           `json:"finishedAt,omitempty"`
	ExitCode   int32           `json:"exitCode"`
	Reason     string          `json:"reason,omitempty"`
	Message    string          `json:"message,omitempty"`
	LogPath    string          `json:"logPath,omitempty"` // absolute
	Rootfs     string          `json:"rootfs"`            // host mount of the container's root filesystem
	Binds      []string        `json:"binds,omitempty"`   // host bind mounts in the share dir, to undo
	User       *User           `json:"user,omitempty"`    // identity of the container's first process
	// Spec is the OCI spec the agent got; Exec builds its processes from it.
	// It lives here, in cocoond's state, never in the guest-writable share.
	Spec json.RawMessage `json:"spec,omitempty"`
	// Log places the log file in the container's output streams, so a
	// restarted cocoond knows from the file how much it persisted.
	Log LogMark `json:"log,omitzero"`

	config *runtimeapi.ContainerConfig // Config decoded once, shared: see Pod.config
}

// LogMark ties a container's CRI log file to the absolute offsets of its
// output streams: every byte of stream s before the current file is counted
// in Base[s] (files kubelet rotated away, and bytes the agent no longer had
// when cocoond came back); the file holds the container's records from byte
// Start on (a file kubelet reused may hold older ones before).
type LogMark struct {
	Start int64     `json:"start,omitempty"`
	Base  [2]uint64 `json:"base,omitzero"` // stdout, stderr
}

// User is the identity a container's processes run as, after the image's
// /etc/passwd and /etc/group and the supplemental groups policy applied.
type User struct {
	UID            uint32   `json:"uid"`
	GID            uint32   `json:"gid"`
	AdditionalGids []uint32 `json:"additionalGids,omitempty"`
}

func (c Container) id() string { return c.ID }

// ContainerConfig is the CRI config the container was created with (or
// last updated to), decoded once: it is shared, do not modify it.
func (c *Container) ContainerConfig() *runtimeapi.ContainerConfig {
	if c.config != nil {
		return c.config
	}
	return decodeContainerConfig(c.Config)
}

func marshalConfig(m proto.Message) (json.RawMessage, error) {
	return protojson.Marshal(m)
}

// configDecodes counts protojson decodes of persisted configs, so a test
// can prove that reads (status, lists, kubelet's polls) never decode.
var configDecodes atomic.Int64

// A config that no longer decodes (a record written by a cocoond with fields
// this one does not know) reads as what it could decode, as it always has.
var lenient = protojson.UnmarshalOptions{DiscardUnknown: true}

func decodePodConfig(raw json.RawMessage) *runtimeapi.PodSandboxConfig {
	configDecodes.Add(1)
	var c runtimeapi.PodSandboxConfig
	_ = lenient.Unmarshal(raw, &c)
	return &c
}

func decodeContainerConfig(raw json.RawMessage) *runtimeapi.ContainerConfig {
	configDecodes.Add(1)
	var c runtimeapi.ContainerConfig
	_ = lenient.Unmarshal(raw, &c)
	return &c
}

// decodePod is the pod store's prepare hook: it decodes the config of a
// record added or loaded, and again only when an update changed its bytes.
func decodePod(prev, next *Pod) {
	if prev != nil && prev.config != nil && bytes.Equal(prev.Config, next.Config) {
		next.config = prev.config
		return
	}
	next.config = decodePodConfig(next.Config)
}

// decodeContainer is decodePod for containers (UpdateContainerResources
// rewrites the config).
func decodeContainer(prev, next *Container) {
	if prev != nil && prev.config != nil && bytes.Equal(prev.Config, next.Config) {
		next.config = prev.config
		return
	}
	next.config = decodeContainerConfig(next.Config)
}

// PodNetworkRequest asks for a pod's network.
type PodNetworkRequest struct {
	PodID, Name, Namespace, UID string
	PortMappings                []*runtimeapi.PortMapping
	PodCIDR                     string
	// NoTap skips the tap and its redirect: a host pod's containers use
	// the CNI interface in the netns directly.
	NoTap bool
}

// PodNetwork is a pod attached to the cluster network: the netns, the tap the
// VM's NIC uses, and what the guest must configure.
type PodNetwork struct {
	NetnsPath string
	Tap       *os.File
	MAC       net.HardwareAddr
	MTU       int
	IPs       []string
	Interface *agentapi.Interface
	Routes    *agentapi.Routes
}
