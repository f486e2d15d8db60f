package mdevfstest_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"example.com/mdevfstest"
)

const id = "0f3a4e5c-6b7d-4e8f-9a0b-1c2d3e4f5a6b"

// A create counts against the type's pool, links the device on the bus and in an IOMMU
// group, and a second create of the same UUID is EEXIST, as in the kernel.
func TestCreateAndRemove(t *testing.T) {
	tree := mdevfstest.Mount(t, "")
	if err := tree.Create("mtty", "mtty-2", id); err != nil {
		t.Fatal(err)
	}
	if got, _ := tree.Read("class/mdev_bus/mtty/mdev_supported_types/mtty-2/available_instances"); got != "11" {
		t.Errorf("available_instances after a create: %q, want 11", got)
	}
	if got, _ := tree.Devices(); !reflect.DeepEqual(got, []string{id}) {
		t.Errorf("devices: %v", got)
	}
	group, err := os.Readlink(tree.Path(filepath.Join("bus/mdev/devices", id, "iommu_group")))
	if err != nil || filepath.Base(filepath.Dir(group)) != "iommu_groups" {
		t.Errorf("iommu_group link: %q, %v", group, err)
	}
	if err := tree.Create("mtty", "mtty-2", id); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("second create: %v, want EEXIST", err)
	}
	if err := tree.Remove(id); err != nil {
		t.Fatal(err)
	}
	if got, _ := tree.Devices(); len(got) != 0 {
		t.Errorf("devices after remove: %v", got)
	}
}

// A topology of the test's own: a pool of 2 ports, so a third mtty-1 is ENOSPC.
func TestOwnTopologyAndErrno(t *testing.T) {
	config := filepath.Join(t.TempDir(), "host.toml")
	topology := "[[parent]]\ndriver = \"mtty\"\n[parent.options]\nports = 2\n"
	if err := os.WriteFile(config, []byte(topology), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := mdevfstest.Mount(t, config)
	uuids := []string{id, "1f3a4e5c-6b7d-4e8f-9a0b-1c2d3e4f5a6b", "2f3a4e5c-6b7d-4e8f-9a0b-1c2d3e4f5a6b"}
	for _, u := range uuids[:2] {
		if err := tree.Create("mtty", "mtty-1", u); err != nil {
			t.Fatal(err)
		}
	}
	if err := tree.Create("mtty", "mtty-1", uuids[2]); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("third create: %v, want ENOSPC", err)
	}
}
