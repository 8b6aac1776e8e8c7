package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/sandbox"
)

// GetContainerEvents streams container and pod lifecycle events, each with
// the pod's status and its containers' statuses (kubelet's evented PLEG).
func (s *Server) GetContainerEvents(_ *runtimeapi.GetEventsRequest, stream grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	events, cancel := s.pods.Subscribe()
	defer cancel()
	for {
		select {
		case ev := <-events:
			if err := stream.Send(s.eventResponse(ev)); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (s *Server) eventResponse(ev sandbox.Event) *runtimeapi.ContainerEventResponse {
	resp := &runtimeapi.ContainerEventResponse{
		ContainerId: ev.ContainerID, ContainerEventType: eventTypes[ev.Kind], CreatedAt: ev.At.UnixNano(),
	}
	podID := ev.PodID
	if podID == "" {
		if c, err := s.pods.Container(ev.ContainerID); err == nil {
			podID = c.PodID
		}
	}
	if p, err := s.pods.Pod(podID); err == nil {
		resp.PodSandboxStatus = podSandboxStatus(&p)
		for _, c := range s.podContainers(p.ID, nil) {
			resp.ContainersStatuses = append(resp.ContainersStatuses, containerStatus(&c))
		}
	}
	return resp
}
