package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"go.podman.io/storage"

	agentapi "github.com/cocoon-runtime/cocoon/api/agent"
	"github.com/cocoon-runtime/cocoon/internal/pipeline"
	"github.com/cocoon-runtime/cocoon/vm"
)

// Recover runs once at start, before serving. It finishes what a previous
// cocoond left half done (pods and containers still CREATING are removed,
// stops marked CleanupPending are retried), re-adopts each READY pod's VM,
// its agent connection, its containers' log copying and exit watching (a pod
// whose VM died meanwhile becomes NOTREADY with its containers EXITED), and
// then reclaims everything no record claims: VMM and virtiofsd processes and
// VM run dirs, pod cgroups, netns pins and CNI attachments, pod run dirs, and the
// containers/storage containers cocoond made.
func (m *Manager) Recover(ctx context.Context) error {
	var errs []error
	for _, p := range m.pods.list() {
		log := m.opts.Log.WithField("pod", p.ID)
		switch {
		case p.State == StateCreating:
			log.Warn("reclaiming a pod whose RunPodSandbox was cut short")
			if err := m.removePod(ctx, p.ID); err != nil {
				errs = append(errs, fmt.Errorf("pod %s cut short: %w", p.ID, err))
			}
		case p.CleanupPending != "":
			log.WithField("pending", p.CleanupPending).Warn("finishing a pod stop left undone")
			if err := m.stopPod(ctx, p.ID); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", p.ID, err))
			}
		}
	}
	for _, p := range m.pods.list() {
		if p.State != StateReady || p.VM == nil {
			continue
		}
		if err := m.recoverPod(ctx, p); err != nil {
			m.opts.Log.WithField("pod", p.ID).WithError(err).Warn("pod could not be recovered")
			m.markDead(p.ID, fmt.Sprintf("lost across a cocoond restart: %v", err))
			// Whatever of the VM still runs must not run unwatched.
			if err := m.removeVMOf(ctx, &p); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: stopping its unrecoverable VM: %w", p.ID, err))
			}
		}
	}
	for _, c := range m.containers.list() {
		if c.State != StateCreating {
			continue
		}
		m.opts.Log.WithFields(map[string]any{"pod": c.PodID, "container": c.ID}).Warn("reclaiming a container whose CreateContainer was cut short")
		if err := m.reclaimContainer(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("container %s cut short: %w", c.ID, err))
		}
	}
	for _, stray := range []func(context.Context) error{m.removeStrayVMs, m.removeStrayCgroups, m.removeStrayNetworks, m.removeStrayPodDirs, m.removeStrayStorage} {
		if err := stray(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// recoverPod re-adopts one READY pod. On any error it stops what it adopted.
func (m *Manager) recoverPod(ctx context.Context, p Pod) (err error) {
	driver, ok := m.opts.Drivers[p.VM.Driver]
	if !ok {
		return fmt.Errorf("VMM %q is not configured", p.VM.Driver)
	}
	v, err := driver.Adopt(ctx, p.VM)
	if err != nil {
		return err
	}
	rt := &podRuntime{vmm: v, outputs: map[string]*output{}}
	defer func() {
		if err != nil {
			if rt.client != nil {
				rt.client.Close()
			}
			rt.closeOutputs()
			if serr := v.Stop(ctx); serr != nil {
				err = errors.Join(err, fmt.Errorf("stopping the adopted VM: %w", serr))
			}
		}
	}()
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, conn, err := m.reconnectAgent(actx, v)
	if err != nil {
		return err
	}
	rt.client, rt.conn, rt.agent = client, conn, agentapi.NewAgentClient(client)
	log := m.opts.Log.WithField("pod", p.ID)
	for _, c := range m.containers.list() {
		if c.PodID != p.ID || c.State == StateExited || c.State == StateCreating {
			continue
		}
		o, found, err := recoverOutput(ctx, c.LogPath, c.Log)
		if err != nil {
			return fmt.Errorf("container %s log: %w", c.ID, err)
		}
		if found.torn {
			log.WithField("container", c.ID).Warn("cut a log record the crash left torn: its output comes again")
		}
		o.persist = m.logMarkSaver(c.ID)
		if found.uncounted != nil {
			log.WithField("container", c.ID).WithError(found.uncounted).Warn("log not counted: output the agent still holds may appear twice")
			if err := o.persist(o.mark); err != nil {
				return fmt.Errorf("container %s log mark: %w", c.ID, err)
			}
		}
		rt.outputs[c.ID] = o
		if err := o.copyStreams(rt.context(), rt.agent, c.ID, c.ContainerConfig().GetTty(), log.WithField("container", c.ID)); err != nil {
			return fmt.Errorf("container %s output: %w", c.ID, err)
		}
	}
	m.mu.Lock()
	m.live[p.ID] = rt
	m.mu.Unlock()
	for _, c := range m.containers.list() {
		if c.PodID == p.ID && c.State == StateRunning {
			go m.waitExit(rt, c.ID)
		}
	}
	go m.watchVM(p.ID, rt)
	log.Info("pod re-adopted")
	return nil
}

// reclaimContainer removes a container whose CreateContainer was cut short:
// whatever of it exists (in the guest, in the share, in storage) and its
// record. Each part may never have been made.
func (m *Manager) reclaimContainer(ctx context.Context, c Container) error {
	if rt, err := m.runtime(c.PodID); err == nil {
		// The agent treats an unknown container as removed.
		if _, err := rt.agent.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: c.ID, Force: true}); err != nil {
			return fmt.Errorf("agent RemoveContainer: %w", err)
		}
		rt.mu.Lock()
		if o := rt.outputs[c.ID]; o != nil {
			o.close()
			delete(rt.outputs, c.ID)
		}
		rt.mu.Unlock()
	}
	pod, _ := m.pods.get(c.PodID)
	sm, err := m.shareMounterFor(&pod)
	if err != nil {
		return err
	}
	if pod.ShareDir != "" {
		if err := unbindAll(sm, &c, filepath.Join(pod.ShareDir, c.ID)); err != nil {
			return err
		}
	}
	if m.opts.Images != nil {
		if err := removeStorageContainer(m.opts.Images.Store(), c.ID); err != nil {
			return err
		}
	}
	m.ctrNames.release(c.Name)
	return m.containers.remove(c.ID)
}

// removeStorageContainer unmounts and deletes a storage container; one that
// does not exist (or whose layer is gone) is removed already.
func removeStorageContainer(store storage.Store, id string) error {
	gone := isUnknownContainer
	if _, err := store.Container(id); gone(err) {
		return nil
	}
	if _, err := store.Unmount(id, true); err != nil && !gone(err) {
		return fmt.Errorf("unmount rootfs %s: %w", id, err)
	}
	if err := store.DeleteContainer(id); err != nil && !gone(err) {
		return fmt.Errorf("delete rootfs %s: %w", id, err)
	}
	return nil
}

// removeStrayNetworks detaches networks no pod record claims (a crash between
// attaching a pod's network and persisting the pod, or after removing the
// record), so their netns, veth and IP lease do not outlive them.
func (m *Manager) removeStrayNetworks(ctx context.Context) error {
	attached, err := m.opts.Network.Attached()
	if err != nil {
		return err
	}
	var errs []error
	for id, netns := range attached {
		if _, ok := m.pods.get(id); ok {
			continue
		}
		m.opts.Log.WithField("pod", id).Warn("detaching a network no pod claims")
		if err := m.opts.Network.Detach(ctx, id, netns); err != nil {
			errs = append(errs, fmt.Errorf("stray network of %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// removeStrayVMs stops VMs under the VM dir that no pod record claims, and
// their helpers, whether or not their own record was written in full.
func (m *Manager) removeStrayVMs(ctx context.Context) error {
	claimed := map[string]bool{}
	for _, p := range m.pods.list() {
		claimed[m.vmRunDir(p.ID)] = true
		if p.VM != nil {
			claimed[filepath.Clean(p.VM.RunDir)] = true
		}
	}
	_, err := vm.RemoveOrphans(ctx, m.opts.VMDir, m.opts.Drivers, func(st *vm.State) bool {
		return claimed[filepath.Clean(st.RunDir)]
	}, m.opts.Log)
	return err
}

// removeStrayPodDirs removes pod run dirs no pod record claims (a crash
// before the pod was persisted or after its record went), unmounting the
// pod's own share tmpfs first. One with any other mount below it is left
// alone (and logged): removing it would walk into whatever is mounted there.
func (m *Manager) removeStrayPodDirs(context.Context) error {
	entries, err := os.ReadDir(m.opts.RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if _, ok := m.pods.get(e.Name()); ok || !e.IsDir() {
			continue
		}
		dir := filepath.Join(m.opts.RunDir, e.Name())
		share := filepath.Join(dir, shareDirName)
		mounts, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
			ours := i.Mountpoint == share && i.FSType == "tmpfs" && i.Source == shareSource
			return ours || !strings.HasPrefix(i.Mountpoint, dir+"/"), false
		})
		if err != nil || len(mounts) > 0 {
			errs = append(errs, fmt.Errorf("stray pod dir %s has foreign mounts (%d) or they cannot be read (%v): left in place", dir, len(mounts), err))
			continue
		}
		m.opts.Log.WithField("dir", dir).Warn("removing a pod run dir no pod claims")
		if err := removePodDirs(dir, share); err != nil {
			errs = append(errs, fmt.Errorf("stray pod dir %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// cocoonStorageCreator marks the containers/storage containers cocoond makes
// (in their metadata), so a sweep never touches another tool's containers
// sharing the graph root.
const cocoonStorageCreator = "cocoond"

type storageMeta struct {
	Creator string `json:"creator"`
	Pod     string `json:"pod"`
}

func storageMetadata(podID string) string {
	b, _ := json.Marshal(storageMeta{Creator: cocoonStorageCreator, Pod: podID})
	return string(b)
}

func madeByCocoond(metadata string) bool {
	var md storageMeta
	return json.Unmarshal([]byte(metadata), &md) == nil && md.Creator == cocoonStorageCreator
}

// removeStrayStorage deletes the storage containers cocoond made that no
// container record claims (a crash between creating one and recording it, or
// after removing the record).
func (m *Manager) removeStrayStorage(context.Context) error {
	if m.opts.Images == nil {
		return nil
	}
	store := m.opts.Images.Store()
	all, err := store.Containers()
	if err != nil {
		return fmt.Errorf("listing storage containers: %w", err)
	}
	var errs []error
	for _, sc := range all {
		if !madeByCocoond(sc.Metadata) {
			continue
		}
		if _, ok := m.containers.get(sc.ID); ok {
			continue
		}
		m.opts.Log.WithField("container", sc.ID).Warn("deleting a storage container no container claims")
		if err := removeStorageContainer(store, sc.ID); err != nil {
			errs = append(errs, fmt.Errorf("stray storage container: %w", err))
		}
	}
	return errors.Join(errs...)
}

// recordProgress makes each step between "record" and "persist" save c into
// its record when the step changed it, so a record cut short by a crash
// names the rootfs and binds made so far.
func recordProgress(s *store[Container], c *Container, steps []pipeline.Step) {
	on := false
	for i := range steps {
		switch steps[i].Name {
		case "record":
			on = true
			continue
		case "persist":
			on = false
		}
		if !on {
			continue
		}
		run := steps[i].Run
		steps[i].Run = func(ctx context.Context) (func() error, error) {
			before, _ := json.Marshal(c)
			undo, err := run(ctx)
			if after, _ := json.Marshal(c); err == nil && string(after) != string(before) {
				_, err = s.update(c.ID, func(r *Container) error { *r = *c; return nil })
			}
			return undo, err
		}
	}
}
