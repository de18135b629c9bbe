package transport

import (
	"io"
	"net"
	"sync"
)

// Splice copies between a and b in both directions until both directions
// are done, passing each end of stream on as a half close (CloseWrite where
// the connection has one, Close otherwise: a transport stream's Close is a
// half close). The caller closes a and b afterwards.
func Splice(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}
