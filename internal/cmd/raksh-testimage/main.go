// Command raksh-testimage writes the small busybox image the demo and the
// integration tests run (Debian's static busybox, no registry needed) as an
// archive for `ctr image import`.
//
//	raksh-testimage -ref docker.io/raksh/busybox:demo -o busybox.tar
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/raksh-project/raksh/integration/testimage"
)

func main() {
	ref := flag.String("ref", "docker.io/raksh/busybox:demo", "image reference recorded in the archive")
	out := flag.String("o", "", "output archive (required)")
	marker := flag.String("marker", "", "content of /etc/raksh-marker in the image (optional)")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	extra := map[string]testimage.File{}
	if *marker != "" {
		extra["etc/raksh-marker"] = testimage.File{Mode: 0o644, Content: []byte(*marker + "\n")}
	}
	img, err := testimage.Busybox(extra, "/bin/sh")
	if err == nil {
		err = testimage.WriteArchive(img, *ref, *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "raksh-testimage:", err)
		os.Exit(1)
	}
}
