// Command raksh-testimage writes the small busybox image the demo and the
// integration tests run (Debian's static busybox, no registry needed) as an
// archive for `ctr image import`, or pushes it to a loopback registry.
//
//	raksh-testimage -ref docker.io/raksh/busybox:demo -o busybox.tar
//	raksh-testimage -ref 127.0.0.1:5000/raksh/app:1 -push -marker-file secret.txt
//	raksh-testimage -pause -o pause.tar
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/raksh-project/raksh/integration/testimage"
)

func main() {
	ref := flag.String("ref", "docker.io/raksh/busybox:demo", "image reference recorded in the archive, or pushed to")
	out := flag.String("o", "", "output archive (required unless -push)")
	marker := flag.String("marker", "", "content of /etc/raksh-marker in the image (optional)")
	markerFile := flag.String("marker-file", "", "read the content of /etc/raksh-marker from this file (keeps it out of /proc/*/cmdline)")
	pause := flag.Bool("pause", false, "the CRI sandbox (pause) image instead, as "+testimage.PauseRef+" unless -ref is set")
	push := flag.Bool("push", false, "push to -ref over plain HTTP (a loopback test registry) instead of writing an archive")
	flag.Parse()
	if (*out == "") == !*push || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*ref, *out, *marker, *markerFile, *pause, *push); err != nil {
		fmt.Fprintln(os.Stderr, "raksh-testimage:", err)
		os.Exit(1)
	}
}

func run(ref, out, marker, markerFile string, pause, push bool) error {
	if markerFile != "" {
		b, err := os.ReadFile(markerFile)
		if err != nil {
			return err
		}
		marker = string(b)
	}
	extra := map[string]testimage.File{}
	if marker != "" {
		extra["etc/raksh-marker"] = testimage.File{Mode: 0o644, Content: []byte(marker + "\n")}
	}
	img, err := testimage.Busybox(extra, "/bin/sh")
	if pause {
		img, err = testimage.Pause()
		if !isSet("ref") {
			ref = testimage.PauseRef
		}
	}
	if err != nil {
		return err
	}
	if !push {
		return testimage.WriteArchive(img, ref, out)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(r, img)
}

func isSet(f string) bool {
	set := false
	flag.Visit(func(fl *flag.Flag) { set = set || fl.Name == f })
	return set
}
