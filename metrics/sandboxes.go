package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// Sandboxes is what the scrape-time collectors read: the sandbox store.
type Sandboxes interface {
	Pods() []sandbox.Pod
	Containers() []sandbox.Container
}

var (
	sandboxesDesc = prometheus.NewDesc(namespace+"_sandboxes",
		"Pod sandboxes by state.", []string{"state"}, nil)
	containersDesc = prometheus.NewDesc(namespace+"_containers",
		"Containers by state.", []string{"state"}, nil)
)

// Label values; every one is exported, zero or not, so a state that empties
// reads 0 rather than vanishing.
var (
	podStates = map[sandbox.PodState]string{sandbox.StateReady: "ready", sandbox.StateNotReady: "notready"}
	ctrStates = map[sandbox.ContainerState]string{sandbox.StateCreated: "created", sandbox.StateRunning: "running", sandbox.StateExited: "exited"}
)

const stateUnknown = "unknown"

// stateCollector counts pods and containers by state on every scrape.
type stateCollector struct {
	store Sandboxes
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sandboxesDesc
	ch <- containersDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	pods := map[string]float64{}
	for _, label := range podStates {
		pods[label] = 0
	}
	for _, p := range c.store.Pods() {
		// A pod is READY or NOTREADY; anything else would be a bug in sandbox/,
		// better seen as notready than hidden.
		label, ok := podStates[p.State]
		if !ok {
			label = podStates[sandbox.StateNotReady]
		}
		pods[label]++
	}
	containers := map[string]float64{stateUnknown: 0}
	for _, label := range ctrStates {
		containers[label] = 0
	}
	for _, ctr := range c.store.Containers() {
		label, ok := ctrStates[ctr.State]
		if !ok {
			label = stateUnknown
		}
		containers[label]++
	}
	for label, n := range pods {
		ch <- prometheus.MustNewConstMetric(sandboxesDesc, prometheus.GaugeValue, n, label)
	}
	for label, n := range containers {
		ch <- prometheus.MustNewConstMetric(containersDesc, prometheus.GaugeValue, n, label)
	}
}
