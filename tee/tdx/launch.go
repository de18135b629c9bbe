package tdx

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
)

// LaunchConfig is the host-side TDX launch configuration.
type LaunchConfig struct {
	// ObjectID is the QEMU object id. Default "tee0".
	ObjectID string `toml:"object_id"`
	// QuoteGenerationVsockPort, when non-zero, points the guest's quote
	// requests at the host's Quote Generation Service on vsock CID 2 and
	// this port (QGS's default is 4050). Without it, configfs-tsm quotes
	// fail in the guest (TD reports still work).
	QuoteGenerationVsockPort uint32 `toml:"quote_generation_vsock_port"`
}

// Launcher renders QEMU options for a TDX guest (QEMU 10.1+ tdx-guest).
type Launcher struct {
	cfg LaunchConfig
}

var _ tee.Launcher = (*Launcher)(nil)

// NewLauncher returns a Launcher for cfg, filling in defaults.
func NewLauncher(cfg LaunchConfig) (*Launcher, error) {
	if cfg.ObjectID == "" {
		cfg.ObjectID = "tee0"
	}
	if strings.ContainsAny(cfg.ObjectID, ",= \"") {
		return nil, fmt.Errorf("tdx: bad QEMU id %q: %w", cfg.ObjectID, errdefs.ErrInvalidArgument)
	}
	return &Launcher{cfg: cfg}, nil
}

// Type returns tee.TDX.
func (l *Launcher) Type() tee.Type { return tee.TDX }

// LaunchArgs returns the tdx-guest object, machine options and firmware for
// one VM. The init-data digest becomes MRCONFIGID (see MrConfigID), which
// the TDX module puts into every TD report. p.Firmware must be a TDVF
// (OVMF built with TDX support). TD_ATTRIBUTES keep QEMU's default
// (SEPT_VE_DISABLE, no DEBUG).
func (l *Launcher) LaunchArgs(p tee.LaunchParams) (tee.LaunchArgs, error) {
	id, err := MrConfigID(p.InitDataDigest)
	if err != nil {
		return tee.LaunchArgs{}, err
	}
	if p.Firmware == "" {
		return tee.LaunchArgs{}, fmt.Errorf("tdx: a TDVF firmware path is required: %w", errdefs.ErrInvalidArgument)
	}
	mrconfigid := base64.StdEncoding.EncodeToString(id)
	var obj string
	if l.cfg.QuoteGenerationVsockPort != 0 {
		// The socket address is a nested struct: only the JSON form of
		// -object can express it.
		b, err := json.Marshal(map[string]any{
			"qom-type":   "tdx-guest",
			"id":         l.cfg.ObjectID,
			"mrconfigid": mrconfigid,
			"quote-generation-socket": map[string]string{
				"type": "vsock", "cid": "2", "port": fmt.Sprint(l.cfg.QuoteGenerationVsockPort),
			},
		})
		if err != nil {
			return tee.LaunchArgs{}, err
		}
		obj = string(b)
	} else {
		obj = "tdx-guest,id=" + l.cfg.ObjectID + ",mrconfigid=" + mrconfigid
	}
	return tee.LaunchArgs{
		MachineOptions: []string{"kernel-irqchip=split", "confidential-guest-support=" + l.cfg.ObjectID},
		Objects:        []string{obj},
		Extra:          []string{"-bios", p.Firmware},
	}, nil
}
