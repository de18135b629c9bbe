//go:build !ppc64le

package pef

// esmbGetFileUcall is nil off ppc64le: there is no ultravisor to call.
var esmbGetFileUcall ucallFunc
