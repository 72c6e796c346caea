// A CNI runtime for weft's tests: the libcni code path containerd and CRI-O use
// (CNIConfig.AddNetworkList, CheckNetworkList, DelNetworkList, GetVersionInfo), driven from the
// command line. libcni 1.1 (Debian 12) predates spec 1.1.0, so GC and STATUS are run the way
// libcni 1.2's GCNetworkList and GetStatusNetworkList run them: the config of each plugin with
// name and cniVersion injected (and cni.dev/valid-attachments for GC), executed through
// libcni's invoke package.
//
// Built by tests/cni.rs with GO111MODULE=off GOPATH=/usr/share/gocode go build.
//
// Usage: driver OP CONFLIST [ID IFNAME NETNS [CNI_ARGS]]
//
//	OP: add (prints the result), check, del, version PLUGIN, gc VALID (id/ifname,...; "" for
//	none), status.
//
// CNI_PATH (the plugin directories, ':'-separated), CNI_CACHE_DIR (libcni's result cache) and
// CNI_CAPABILITY_ARGS (JSON: the runtime's capability arguments, e.g. portMappings, bandwidth)
// come from the environment. A failure prints the CNI error as JSON ({"code","msg","details"})
// on stdout and exits 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

// gcAttachment is libcni 1.2's types.GCAttachment.
type gcAttachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

func fail(err error) {
	out := map[string]interface{}{"code": 999, "msg": err.Error()}
	// libcni wraps a plugin's error ("plugin type=... failed (add): %w").
	var e *types.Error
	if errors.As(err, &e) {
		out = map[string]interface{}{"code": e.Code, "msg": e.Msg, "details": e.Details}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Exit(1)
}

func args(n int) {
	if len(os.Args) < n {
		fmt.Fprintln(os.Stderr, "usage: driver OP CONFLIST [ID IFNAME NETNS [CNI_ARGS]]")
		os.Exit(2)
	}
}

// runtimeConf builds the attachment's parameters from ID IFNAME NETNS [CNI_ARGS].
func runtimeConf() *libcni.RuntimeConf {
	args(6)
	rt := &libcni.RuntimeConf{ContainerID: os.Args[3], IfName: os.Args[4], NetNS: os.Args[5]}
	if caps := os.Getenv("CNI_CAPABILITY_ARGS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			fail(err)
		}
	}
	if len(os.Args) > 6 && os.Args[6] != "" {
		for _, kv := range strings.Split(os.Args[6], ";") {
			parts := strings.SplitN(kv, "=", 2)
			if len(parts) == 2 {
				rt.Args = append(rt.Args, [2]string{parts[0], parts[1]})
			}
		}
	}
	return rt
}

// perPlugin runs cmd on every plugin of list the way libcni 1.2 runs GC and STATUS.
func perPlugin(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, cmd string, inject map[string]interface{}) {
	inject["name"] = list.Name
	inject["cniVersion"] = list.CNIVersion
	var errs []error
	for _, plugin := range list.Plugins {
		conf, err := libcni.InjectConf(plugin, inject)
		if err != nil {
			fail(err)
		}
		path, err := invoke.FindInPath(plugin.Network.Type, cni.Path)
		if err != nil {
			fail(err)
		}
		a := &invoke.Args{Command: cmd, Path: strings.Join(cni.Path, ":")}
		if err := invoke.ExecPluginWithoutResult(ctx, path, conf.Bytes, a, nil); err != nil {
			// GC goes on after an error; STATUS stops at the first.
			if cmd == "STATUS" {
				fail(err)
			}
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		fail(errs[0])
	}
}

func main() {
	args(3)
	ctx := context.Background()
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(os.Getenv("CNI_PATH"), ":"), os.Getenv("CNI_CACHE_DIR"), nil)
	list, err := libcni.ConfListFromFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	switch os.Args[1] {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, runtimeConf())
		if err != nil {
			fail(err)
		}
		if err := result.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, runtimeConf()); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, runtimeConf()); err != nil {
			fail(err)
		}
	case "version":
		args(4)
		info, err := cni.GetVersionInfo(ctx, os.Args[3])
		if err != nil {
			fail(err)
		}
		b, _ := json.Marshal(info.SupportedVersions())
		fmt.Println(string(b))
	case "gc":
		args(4)
		valid := []gcAttachment{}
		for _, a := range strings.Split(os.Args[3], ",") {
			parts := strings.SplitN(a, "/", 2)
			if len(parts) == 2 {
				valid = append(valid, gcAttachment{ContainerID: parts[0], IfName: parts[1]})
			}
		}
		perPlugin(ctx, cni, list, "GC", map[string]interface{}{"cni.dev/valid-attachments": valid})
	case "status":
		perPlugin(ctx, cni, list, "STATUS", map[string]interface{}{})
	default:
		fmt.Fprintln(os.Stderr, "unknown op", os.Args[1])
		os.Exit(2)
	}
}
