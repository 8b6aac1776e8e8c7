package guestmodules

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	mods := []string{"kernel/virtio_ring.ko", "kernel/drivers/char/hw_random/virtio-rng.ko"}
	got, err := Decode(bytes.NewReader(Encode(mods)), ListName)
	if err != nil || !reflect.DeepEqual(got, mods) {
		t.Fatalf("Decode(Encode(%v)) = %v, %v", mods, got, err)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		list    string
		want    []string
		wantErr string
	}{
		{name: "comments and blanks skipped", list: "# deps first\na.ko\n\n  b.ko  \n", want: []string{"a.ko", "b.ko"}},
		{name: "empty list", list: "", want: nil},
		{name: "absolute path refused", list: "a.ko\n/etc/shadow\n", wantErr: ":2: module path \"/etc/shadow\" is not relative"},
		{name: "escaping path refused", list: "../../etc/shadow\n", wantErr: "not relative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(strings.NewReader(tt.list), "list")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Decode = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestListPath(t *testing.T) {
	if got, want := ListPath("/r", "6.1.0"), "/r/lib/modules/6.1.0/cocoon.modules"; got != want {
		t.Fatalf("ListPath = %q, want %q", got, want)
	}
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/char/hw_random/virtio-rng.ko": "virtio_rng",
		"fuse.ko.xz":          "fuse",
		"9pnet_virtio.ko":     "9pnet_virtio",
		"/abs/overlay.ko.zst": "overlay",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}
