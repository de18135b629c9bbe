// Command nonewprivs prints its effective user id. critest's NoNewPrivs
// tests run it setuid root as uid 1000: with no_new_privs it prints 1000,
// without it 0 (the role of registry.k8s.io/e2e-test-images/nonewprivs).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
