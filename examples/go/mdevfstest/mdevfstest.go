// Package mdevfstest mounts an emulated mdev sysfs tree (mdevfs) for a Go test and unmounts
// it in t.Cleanup: the way Go code that reads /sys/class/mdev_bus, /sys/bus/mdev and the
// parents' directories (KubeVirt, NVIDIA's device plugins) can test against the kernel's
// behaviour instead of a hand-built temporary directory. Standard library only.
//
//	func TestAllocator(t *testing.T) {
//		tree := mdevfstest.Mount(t, "")              // "" is the embedded default topology
//		id := "0f3a4e5c-6b7d-4e8f-9a0b-1c2d3e4f5a6b"
//		if err := tree.Create("mtty", "mtty-1", id); err != nil { t.Fatal(err) }
//		// your code, given tree.Root as its sysfs root
//	}
//
// The mdevfs command is $MDEVFS if set, else "mdevfs" on $PATH. The tree is mounted
// detached in t.TempDir() and unmounted by the cleanup, also when the test fails; a test
// binary killed outright leaves the mount behind (`mdevfs umount DIR` removes it).
// Mounting needs /dev/fuse and root (or a setuid fusermount3): where mdevfs says it is
// not permitted or /dev/fuse is missing, the test is skipped with the reason, unless
// MDEVFS_STRICT=1, which fails it as the pytest plugin does.
package mdevfstest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Tree is a mounted sysfs root.
type Tree struct {
	// Root is the sysfs root: Root/class/mdev_bus/<parent>, Root/bus/mdev/devices/<uuid>, ...
	Root string
	// Log is the daemon's log file.
	Log string
}

func command() []string {
	if m := os.Getenv("MDEVFS"); m != "" {
		return strings.Fields(m)
	}
	return []string{"mdevfs"}
}

func mdevfs(args ...string) (string, error) {
	cmd := command()
	out, err := exec.Command(cmd[0], append(cmd[1:], args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func strict() bool {
	v := strings.ToLower(os.Getenv("MDEVFS_STRICT"))
	return v == "1" || v == "true" || v == "yes" || v == "on"
}

// Mount mounts the topology file config ("" for the embedded default) and returns once
// the tree answers. It is unmounted when the test ends.
func Mount(t testing.TB, config string) *Tree {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		cannot(t, "/dev/fuse is missing: load the fuse module or give the container --device /dev/fuse")
	}
	dir := t.TempDir()
	tree := &Tree{Root: filepath.Join(dir, "sys"), Log: filepath.Join(dir, "mdevfs.log")}
	if err := os.Mkdir(tree.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	// the control socket goes to mdevfs's runtime directory: a socket path in a deep
	// t.TempDir() could pass the 107-byte limit
	args := []string{"mount", "--log-file", tree.Log}
	if config != "" {
		args = append(args, "--config", config)
	}
	out, err := mdevfs(append(args, tree.Root)...)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 4 { // mounting FUSE is not permitted here
		cannot(t, out)
	}
	if err != nil {
		t.Fatalf("mdevfs mount: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := mdevfs("umount", tree.Root); err != nil {
			t.Errorf("mdevfs umount: %v: %s", err, out)
			exec.Command("fusermount3", "-u", "-z", tree.Root).Run()
		}
	})
	return tree
}

func cannot(t testing.TB, reason string) {
	t.Helper()
	if strict() {
		t.Fatalf("mdevfs: %s (MDEVFS_STRICT=1)", reason)
	}
	t.Skipf("mdevfs: %s", reason)
}

// Path is rel inside the tree.
func (m *Tree) Path(rel string) string { return filepath.Join(m.Root, rel) }

// Read returns the contents of the attribute rel, without the trailing newline.
func (m *Tree) Read(rel string) (string, error) {
	b, err := os.ReadFile(m.Path(rel))
	return strings.TrimSuffix(string(b), "\n"), err
}

// Write writes value to the attribute rel in one write(2), as `echo value > rel` does.
func (m *Tree) Write(rel, value string) error {
	f, err := os.OpenFile(m.Path(rel), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Create makes the mdev uuid of typeID on parent, as the kernel's create file does; its
// error is the kernel's errno (errors.Is(err, syscall.EEXIST), ENOSPC, ...).
func (m *Tree) Create(parent, typeID, uuid string) error {
	return m.Write(filepath.Join("class/mdev_bus", parent, "mdev_supported_types", typeID, "create"), uuid+"\n")
}

// Remove removes the mdev uuid.
func (m *Tree) Remove(uuid string) error {
	return m.Write(filepath.Join("bus/mdev/devices", uuid, "remove"), "1\n")
}

// Devices lists the mdevs that exist now (bus/mdev/devices).
func (m *Tree) Devices() ([]string, error) {
	entries, err := os.ReadDir(m.Path("bus/mdev/devices"))
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, err
}
