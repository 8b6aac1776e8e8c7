package sandbox

import (
	"fmt"
	"slices"

	"github.com/cocoon-runtime/cocoon/errdefs"
)

// PodState is where a pod is in its life. The values are what records
// persist, so they never change.
type PodState string

// ContainerState is where a container is in its life, persisted as is.
type ContainerState string

// Pod states.
const (
	StateReady    PodState = "READY"
	StateNotReady PodState = "NOTREADY"
)

// Container states.
const (
	StateCreated ContainerState = "CREATED"
	StateRunning ContainerState = "RUNNING"
	StateExited  ContainerState = "EXITED"
)

// StateCreating is the first state of a pod and of a container: the record
// is written before the resources it names, and a restart that finds one
// reclaims them. It is left untyped because both kinds of record start there.
const StateCreating = "CREATING"

// The allowed transitions, the one place that says how records move. The
// store refuses any other change of state, so a late write (a start that
// lands after the VM died, a stale copy saved over a newer record) fails
// instead of resurrecting what ended. Staying in a state is always allowed.
//
// Pods:
//
//	RunPodSandbox ──► CREATING ──► READY ──StopPodSandbox / VM died──► NOTREADY ──RemovePodSandbox──► (gone)
//	                     │ (a step fails: everything undone, record removed;
//	                     │  an undo fails: NOTREADY with CleanupPending)
//	                     ▼ (cocoond restarts: reclaimed and removed)
//	                   (gone)
//
// The record is written (CREATING) before the netns, the network and the VM
// it names exist, so a cocoond killed at any point leaves a record or nothing
// that a restart could not find. A stop that fails keeps CleanupPending set;
// the next Stop/Remove or a restart retries it.
//
// Containers:
//
//	CreateContainer ──► CREATING ──► CREATED ──StartContainer──► RUNNING ──exit / StopContainer / pod stop / VM died──► EXITED
//	                                    └───────────────pod stop / VM died──────────────────────────────────────────────┘
//
// RemoveContainer removes CREATED and EXITED containers (and RUNNING ones
// after killing them); a CREATING one is only ever undone by its own
// CreateContainer or reclaimed by a restart. Every way to EXITED goes
// through recordExit (exit.go).
var (
	podTransitions = map[PodState][]PodState{
		StateCreating: {StateReady, StateNotReady},
		StateReady:    {StateNotReady},
	}
	containerTransitions = map[ContainerState][]ContainerState{
		StateCreating: {StateCreated},
		StateCreated:  {StateRunning, StateExited},
		StateRunning:  {StateExited},
	}
)

// canBecome reports whether a pod in s may move to next.
func (s PodState) canBecome(next PodState) bool {
	return s == next || slices.Contains(podTransitions[s], next)
}

// canBecome reports whether a container in s may move to next.
func (s ContainerState) canBecome(next ContainerState) bool {
	return s == next || slices.Contains(containerTransitions[s], next)
}

// errTransition is a refused change of state: the record moved on meanwhile.
func errTransition[S ~string](kind, id string, from, to S) error {
	return fmt.Errorf("%w: %s %s is %s, it cannot become %s", errdefs.ErrFailedPrecondition, kind, id, from, to)
}

// checkPod is the pod store's guard on every update.
func checkPod(prev, next *Pod) error {
	if !prev.State.canBecome(next.State) {
		return errTransition("pod", prev.ID, prev.State, next.State)
	}
	return nil
}

// checkContainer is the container store's guard on every update.
func checkContainer(prev, next *Container) error {
	if !prev.State.canBecome(next.State) {
		return errTransition("container", prev.ID, prev.State, next.State)
	}
	return nil
}
