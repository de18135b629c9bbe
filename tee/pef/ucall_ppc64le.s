//go:build ppc64le

#include "textflag.h"

// func esmbGetFile(offset uint64, name *[8]uint64, out *[8]uint64) int64
TEXT ·esmbGetFile(SB), NOSPLIT, $0-32
	MOVD	name+8(FP), R14
	MOVD	offset+0(FP), R4
	MOVD	0(R14), R5
	MOVD	8(R14), R6
	MOVD	16(R14), R7
	MOVD	24(R14), R8
	MOVD	32(R14), R9
	MOVD	40(R14), R10
	MOVD	48(R14), R11
	MOVD	56(R14), R12
	MOVD	$0xF14C, R3
	WORD	$0x44000042 // sc 2 (ultracall)
	MOVD	out+16(FP), R14
	MOVD	R4, 0(R14)
	MOVD	R5, 8(R14)
	MOVD	R6, 16(R14)
	MOVD	R7, 24(R14)
	MOVD	R8, 32(R14)
	MOVD	R9, 40(R14)
	MOVD	R10, 48(R14)
	MOVD	R11, 56(R14)
	MOVD	R3, ret+24(FP)
	RET
