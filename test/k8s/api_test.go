package k8s

import (
	"strconv"
	"strings"
	"time"
)

// The parts of kubelet's JSON this test reads: /pods is a core/v1 PodList,
// /stats/summary a stats/v1alpha1 Summary. Written here rather than
// importing k8s.io/api and k8s.io/kubelet, whose trees would swamp ours.

type podList struct {
	Items []pod `json:"items"`
}

type pod struct {
	Metadata struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"metadata"`
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type               string    `json:"type"`
			Status             string    `json:"status"`
			LastTransitionTime time.Time `json:"lastTransitionTime"`
		} `json:"conditions"`
		PodIP                 string            `json:"podIP"`
		InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
		ContainerStatuses     []containerStatus `json:"containerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name         string         `json:"name"`
	ContainerID  string         `json:"containerID"`
	Ready        bool           `json:"ready"`
	RestartCount int            `json:"restartCount"`
	State        containerState `json:"state"`
	LastState    containerState `json:"lastState"`
}

type containerState struct {
	Running *struct {
		StartedAt time.Time `json:"startedAt"`
	} `json:"running"`
	Terminated *struct {
		ExitCode int    `json:"exitCode"`
		Reason   string `json:"reason"`
	} `json:"terminated"`
}

// condition reports a pod condition's status ("True"/"False"/"") and when
// it last changed.
func (p *pod) condition(typ string) (string, time.Time) {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c.Status, c.LastTransitionTime
		}
	}
	return "", time.Time{}
}

func (p *pod) container(name string) *containerStatus {
	for i := range p.Status.ContainerStatuses {
		if p.Status.ContainerStatuses[i].Name == name {
			return &p.Status.ContainerStatuses[i]
		}
	}
	return nil
}

func (p *pod) initContainer(name string) *containerStatus {
	for i := range p.Status.InitContainerStatuses {
		if p.Status.InitContainerStatuses[i].Name == name {
			return &p.Status.InitContainerStatuses[i]
		}
	}
	return nil
}

type summary struct {
	Node struct {
		Fs      *fsStats `json:"fs"`
		Runtime *struct {
			ImageFs *fsStats `json:"imageFs"`
		} `json:"runtime"`
	} `json:"node"`
	Pods []podStats `json:"pods"`
}

type podStats struct {
	PodRef struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"podRef"`
	Containers       []containerStats `json:"containers"`
	CPU              *cpuStats        `json:"cpu"`
	Memory           *memoryStats     `json:"memory"`
	Network          *networkStats    `json:"network"`
	VolumeStats      []volumeStats    `json:"volume"`
	EphemeralStorage *fsStats         `json:"ephemeral-storage"`
}

type containerStats struct {
	Name   string       `json:"name"`
	CPU    *cpuStats    `json:"cpu"`
	Memory *memoryStats `json:"memory"`
	Rootfs *fsStats     `json:"rootfs"`
	Logs   *fsStats     `json:"logs"`
}

type cpuStats struct {
	UsageCoreNanoSeconds *uint64 `json:"usageCoreNanoSeconds"`
}

type memoryStats struct {
	WorkingSetBytes *uint64 `json:"workingSetBytes"`
}

type networkStats struct {
	Interfaces []struct {
		Name    string  `json:"name"`
		RxBytes *uint64 `json:"rxBytes"`
		TxBytes *uint64 `json:"txBytes"`
	} `json:"interfaces"`
}

type volumeStats struct {
	Name      string  `json:"name"`
	UsedBytes *uint64 `json:"usedBytes"`
}

type fsStats struct {
	CapacityBytes *uint64 `json:"capacityBytes"`
	UsedBytes     *uint64 `json:"usedBytes"`
}

// crictl's -o json answers (the CRI messages as protojson).

type crictlPods struct {
	Items []struct {
		ID       string `json:"id"`
		State    string `json:"state"`
		Metadata struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"metadata"`
	} `json:"items"`
}

type crictlContainers struct {
	Containers []struct {
		ID           string `json:"id"`
		PodSandboxID string `json:"podSandboxId"`
		State        string `json:"state"`
		Metadata     struct {
			Name    string `json:"name"`
			Attempt int    `json:"attempt"`
		} `json:"metadata"`
	} `json:"containers"`
}

type crictlStats struct {
	Stats []struct {
		Attributes struct {
			ID       string `json:"id"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"attributes"`
		CPU struct {
			UsageCoreNanoSeconds struct {
				Value u64 `json:"value"`
			} `json:"usageCoreNanoSeconds"`
		} `json:"cpu"`
		Memory struct {
			WorkingSetBytes struct {
				Value u64 `json:"value"`
			} `json:"workingSetBytes"`
		} `json:"memory"`
		WritableLayer struct {
			UsedBytes struct {
				Value u64 `json:"value"`
			} `json:"usedBytes"`
		} `json:"writableLayer"`
	} `json:"stats"`
}

// u64 is a uint64 that protojson may have written as a string.
type u64 uint64

func (v *u64) UnmarshalJSON(b []byte) error {
	n, err := strconv.ParseUint(strings.Trim(string(b), `"`), 10, 64)
	*v = u64(n)
	return err
}
