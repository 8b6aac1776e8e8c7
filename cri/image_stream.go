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
	out := make([]*runtimeapi.Image, 0, len(images))
	for _, img := range images {
		out = append(out, toCRIImage(img))
	}
	return sendChunks(out, func(c []*runtimeapi.Image) error {
		return stream.Send(&runtimeapi.StreamImagesResponse{Images: c})
	})
}
