// Package cni wires pods to the cluster network: netns lifecycle, libcni
// ADD/CHECK/DEL, and the tap + tc redirect that hands the veth to the VM.
package cni

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
)

// ErrNoNetwork says no usable network configuration exists (yet).
var ErrNoNetwork = errors.New("no usable CNI network configuration")

// Network is the configuration pods attach to.
type Network struct {
	File string
	List *libcni.NetworkConfigList
}

// LoadDefault returns the first network configuration in confDir, in lexical
// order as kubelet and containerd pick it, whose plugins all exist in binDirs.
// The error says what is wrong with each file when none is usable.
func LoadDefault(confDir string, binDirs []string) (*Network, error) {
	files, err := libcni.ConfFiles(confDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrNoNetwork, confDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: no .conflist/.conf files in %s", ErrNoNetwork, confDir)
	}
	var problems []string
	for _, f := range files { // ConfFiles returns them sorted
		list, err := LoadFile(f)
		if err == nil {
			err = checkPlugins(list, binDirs)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		return &Network{File: f, List: list}, nil
	}
	return nil, fmt.Errorf("%w in %s: %s", ErrNoNetwork, confDir, strings.Join(problems, "; "))
}

// LoadFile reads one .conflist, or a single-plugin .conf/.json as a list.
func LoadFile(path string) (*libcni.NetworkConfigList, error) {
	if strings.HasSuffix(path, ".conflist") {
		return libcni.NetworkConfFromFile(path)
	}
	conf, err := libcni.ConfFromFile(path)
	if err != nil {
		return nil, err
	}
	if conf.Network.Type == "" {
		return nil, errors.New("plugin type missing")
	}
	return libcni.ConfListFromConf(conf)
}

func checkPlugins(list *libcni.NetworkConfigList, binDirs []string) error {
	if len(list.Plugins) == 0 {
		return errors.New("no plugins")
	}
	if missing := MissingPlugins(list, binDirs); len(missing) > 0 {
		return fmt.Errorf("plugin %q not found in %v", missing[0], binDirs)
	}
	return nil
}

// MissingPlugins lists the plugin types of list that no directory of binDirs holds.
func MissingPlugins(list *libcni.NetworkConfigList, binDirs []string) []string {
	var missing []string
	for _, p := range list.Plugins {
		if _, err := invoke.FindInPath(p.Network.Type, binDirs); err != nil {
			missing = append(missing, p.Network.Type)
		}
	}
	return missing
}

// Probe answers NetworkReady: it re-reads the configuration on every call so
// a CNI daemonset dropping its file in makes the node ready without a restart.
type Probe struct {
	ConfDir string
	BinDirs []string
}

// Ready returns nil when pods can be attached to a network.
func (p Probe) Ready() error {
	_, err := LoadDefault(p.ConfDir, p.BinDirs)
	return err
}
