//go:build ppc64le

package pef

// esmbGetFile issues the UV_ESMB_GET_FILE ultracall (sc 2, r3=0xF14C).
// Implemented in ucall_ppc64le.s. Not exercised by tests: it needs a PEF
// secure VM.
//
//go:noescape
func esmbGetFile(offset uint64, name *[8]uint64, out *[8]uint64) int64

var esmbGetFileUcall ucallFunc = esmbGetFile
