package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// streamChunk bounds one StreamImages message so a large store never hits the
// gRPC message size limit that ListImages can.
const streamChunk = 100

// StreamImages is ListImages sent in chunks.
func (s *Server) StreamImages(req *runtimeapi.StreamImagesRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamImagesResponse]) error {
	images, err := s.images.List(stream.Context(), req.GetFilter().GetImage().GetImage())
	if err != nil {
		return err
	}
	for start := 0; start < len(images); start += streamChunk {
		end := min(start+streamChunk, len(images))
		msg := &runtimeapi.StreamImagesResponse{Images: make([]*runtimeapi.Image, 0, end-start)}
		for _, img := range images[start:end] {
			msg.Images = append(msg.Images, toCRIImage(img))
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}
