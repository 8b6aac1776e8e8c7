package admin

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, f := range []Frame{
		{FrameStdin, []byte("echo hi\n")},
		{FrameStdinEOF, []byte{}},
		{FrameResize, encodeSize(Size{Rows: 50, Cols: 132})},
		{FrameStdout, bytes.Repeat([]byte("x"), MaxFramePayload)},
		{FrameExit, encodeExit(-1)},
		{FrameError, []byte("pod gone")},
	} {
		var b bytes.Buffer
		if err := WriteFrame(&b, f.Type, f.Payload); err != nil {
			t.Fatal(err)
		}
		if b.Len() != frameHeaderLen+len(f.Payload) {
			t.Fatalf("%q: %d bytes on the wire", f.Type, b.Len())
		}
		got, err := ReadFrame(&b)
		if err != nil || got.Type != f.Type || !bytes.Equal(got.Payload, f.Payload) {
			t.Fatalf("%q: read back %q %d bytes, %v", f.Type, got.Type, len(got.Payload), err)
		}
		if _, err := ReadFrame(&b); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
	}
}

func TestFrameRefusesBadInput(t *testing.T) {
	if err := WriteFrame(io.Discard, FrameStdout, make([]byte, MaxFramePayload+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized write: %v", err)
	}
	for _, tt := range []struct {
		name string
		wire []byte
		want error
	}{
		{"length over the limit", []byte{'o', 0xff, 0xff, 0xff, 0xff}, ErrFrameTooLarge},
		{"cut inside the payload", []byte{'o', 0, 0, 0, 5, 'a', 'b'}, io.ErrUnexpectedEOF},
		{"cut inside the header", []byte{'o', 0, 0}, io.ErrUnexpectedEOF},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ReadFrame(bytes.NewReader(tt.wire)); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := decodeSize([]byte{1, 2, 3}); err == nil {
		t.Fatal("short resize payload accepted")
	}
	if _, err := decodeExit(nil); err == nil {
		t.Fatal("empty exit payload accepted")
	}
}

func TestFrameStreamSplitsLargeWrites(t *testing.T) {
	var b bytes.Buffer
	data := bytes.Repeat([]byte("0123456789"), MaxFramePayload/4) // 2.5 frames
	w := (&frameConn{w: &b}).stream(FrameStdout)
	if n, err := w.Write(data); err != nil || n != len(data) {
		t.Fatalf("wrote %d, %v", n, err)
	}
	var got []byte
	frames := 0
	for {
		f, err := ReadFrame(&b)
		if err == io.EOF {
			break
		}
		if err != nil || f.Type != FrameStdout {
			t.Fatalf("frame %q, %v", f.Type, err)
		}
		got = append(got, f.Payload...)
		frames++
	}
	if frames != 3 || !bytes.Equal(got, data) {
		t.Fatalf("%d frames carrying %d bytes, want 3 carrying %d", frames, len(got), len(data))
	}
}

func TestSizeAndExitEncoding(t *testing.T) {
	for _, s := range []Size{{0, 0}, {24, 80}, {65535, 1}} {
		if got, err := decodeSize(encodeSize(s)); err != nil || got != s {
			t.Fatalf("%v → %v, %v", s, got, err)
		}
	}
	for _, c := range []int32{0, 3, 137, -1} {
		if got, err := decodeExit(encodeExit(c)); err != nil || got != c {
			t.Fatalf("%d → %d, %v", c, got, err)
		}
	}
}
