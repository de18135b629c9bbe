package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containers/ocicrypt"
	encconfig "github.com/containers/ocicrypt/config"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/tee"
)

// archivePrefix marks a source image read from a `docker save`-style
// archive instead of a registry.
const archivePrefix = "docker-archive:"

var imageCommand = &cli.Command{
	Name:  "image",
	Usage: "owner-side image operations",
	Subcommands: []*cli.Command{{
		Name:      "encrypt",
		Usage:     "encrypt an image's layers (ocicrypt JWE), store the layer key in the key broker under a policy, and push",
		ArgsUsage: "SOURCE DEST",
		Description: `SOURCE is a registry reference or docker-archive:PATH; DEST a registry reference.
Every layer is encrypted with ocicrypt (JWE, as imgcrypt and skopeo do) to a fresh
RSA key, or to --key. The private key is stored in the broker at --resource, and a
policy rule releasing it only to --tee with --measurement (launch measurements,
hex; see rakshctl tee measure) is added to the broker's policy (a rule for the
same resource is replaced). The node then caches only ciphertext: the runtime's
image_keys = ["<resource>"] makes the attested guest fetch the key and decrypt.
Without --url the key is written to --key-out and nothing is sent to a broker.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "resource", Usage: "broker resource for the layer key (repo/type/tag, e.g. default/image-key/app)", Required: true},
			&cli.StringFlag{Name: "key", Usage: "use this private key (PEM, RSA or EC) instead of generating one"},
			&cli.StringSliceFlag{Name: "recipient", Usage: "extra JWE recipient public key (PEM), e.g. an offline recovery key (repeatable)"},
			&cli.StringSliceFlag{Name: "tee", Usage: "TEE types the policy rule admits (repeatable)", Value: cli.NewStringSlice(string(tee.SNP), string(tee.TDX))},
			&cli.StringSliceFlag{Name: "measurement", Usage: "launch measurement (hex) the policy rule admits (repeatable; none = any)"},
			&cli.BoolFlag{Name: "no-policy", Usage: "store the key but leave the broker's policy alone"},
			&cli.StringFlag{Name: "key-out", Usage: "also write the layer private key here (0600); required without --url"},
			&cli.BoolFlag{Name: "plain-http", Usage: "talk plain HTTP to the registries (loopback test registries)"},
			&cli.StringFlag{Name: "platform", Value: runtime.GOOS + "/" + runtime.GOARCH, Usage: "platform to take from a multi-platform SOURCE"},
			outputFlag("text", "text", "json"),
		}, kbsOptionalFlags()...),
		Action: imageEncrypt,
	}},
}

// kbsOptionalFlags are kbsFlags without Required.
func kbsOptionalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "url", Usage: "KBS URL (http(s)://host:port)", EnvVars: []string{"RAKSH_KBS_URL"}},
		&cli.StringFlag{Name: "admin-key", Usage: "KBS admin private key (PEM)", EnvVars: []string{"RAKSH_KBS_ADMIN_KEY"}},
		&cli.StringFlag{Name: "cacert", Usage: "CA certificate (PEM) of the KBS's TLS certificate"},
	}
}

// encryptResult is what image encrypt reports (no key material).
type encryptResult struct {
	Source     string          `json:"source"`
	Dest       string          `json:"dest"`
	Digest     string          `json:"digest"`
	Layers     []encryptedInfo `json:"layers"`
	Resource   string          `json:"resource"`
	KeyID      string          `json:"kid"`
	KeyStored  bool            `json:"keyStored"`
	PolicyRule *kbs.Rule       `json:"policyRule,omitempty"`
	KeyFile    string          `json:"keyFile,omitempty"`
}

type encryptedInfo struct {
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	DiffID    string `json:"diffID"`
}

func imageEncrypt(c *cli.Context) error {
	out, err := checkOutput(c, "text", "json")
	if err != nil {
		return err
	}
	if c.NArg() != 2 {
		return fmt.Errorf("want SOURCE and DEST: %w", errdefs.ErrInvalidArgument)
	}
	src, dst := c.Args().Get(0), c.Args().Get(1)
	resource, err := kbs.ParseResourcePath(c.String("resource"))
	if err != nil {
		return err
	}
	if c.String("url") == "" && c.String("key-out") == "" {
		return fmt.Errorf("without --url (a broker to store the key in) --key-out is required: %w", errdefs.ErrInvalidArgument)
	}
	var rule *kbs.Rule
	if c.String("url") != "" && !c.Bool("no-policy") {
		rule = &kbs.Rule{Resources: []string{resource}, Measurements: c.StringSlice("measurement")}
		for _, t := range c.StringSlice("tee") {
			rule.TEE = append(rule.TEE, tee.Type(t))
		}
		if err := (&kbs.Policy{Rules: []kbs.Rule{*rule}}).Validate(); err != nil {
			return err
		}
	}
	priv, pub, err := layerKey(c.String("key"))
	if err != nil {
		return err
	}
	pubs := [][]byte{pub}
	for _, r := range c.StringSlice("recipient") {
		b, err := os.ReadFile(r)
		if err != nil {
			return err
		}
		pubs = append(pubs, b)
	}
	cc, err := encconfig.EncryptWithJwe(pubs)
	if err != nil {
		return fmt.Errorf("recipients: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	w := c.App.ErrWriter
	if out == "json" {
		w = io.Discard
	}
	img, err := loadImage(c, src)
	if err != nil {
		return err
	}
	enc, infos, err := encryptImage(img, cc.EncryptConfig, w)
	if err != nil {
		return err
	}
	res := encryptResult{Source: src, Dest: dst, Layers: infos, Resource: resource, KeyID: "kbs:///" + resource, PolicyRule: rule}
	// The key goes to the broker before the image is published, so a pushed
	// image always has a key somewhere.
	if p := c.String("key-out"); p != "" {
		if err := os.WriteFile(p, priv, 0o600); err != nil {
			return err
		}
		res.KeyFile = p
	}
	if c.String("url") != "" {
		a, err := adminClient(c)
		if err != nil {
			return err
		}
		if err := a.SetResource(c.Context, resource, priv); err != nil {
			return fmt.Errorf("store the layer key at %s: %w", resource, err)
		}
		res.KeyStored = true
		fmt.Fprintf(w, "layer key stored in the broker at %s\n", resource)
		if rule != nil {
			if err := addPolicyRule(c.Context, a, *rule); err != nil {
				return err
			}
			fmt.Fprintf(w, "policy: %s only to tee %v, measurements %v\n", resource, rule.TEE, orAny(rule.Measurements))
		}
	}
	ref, err := name.ParseReference(dst, nameOpts(c)...)
	if err != nil {
		return fmt.Errorf("dest %q: %v: %w", dst, err, errdefs.ErrInvalidArgument)
	}
	fmt.Fprintf(w, "pushing %s\n", ref)
	if err := remote.Write(ref, enc, remote.WithContext(c.Context), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := enc.Digest()
	if err != nil {
		return err
	}
	res.Digest = d.String()
	if out == "json" {
		return printJSON(c.App.Writer, res)
	}
	fmt.Fprintf(c.App.Writer, "pushed %s@%s: %d encrypted layer(s), key kbs:///%s\n", dst, res.Digest, len(infos), resource)
	return nil
}

func orAny(s []string) any {
	if len(s) == 0 {
		return "any"
	}
	return s
}

func nameOpts(c *cli.Context) []name.Option {
	if c.Bool("plain-http") {
		return []name.Option{name.Insecure}
	}
	return nil
}

// layerKey reads the private key at path, or generates an RSA-3072 key,
// and returns it and its public part as PEM.
func layerKey(path string) (priv, pub []byte, err error) {
	var key any
	if path != "" {
		if priv, err = os.ReadFile(path); err != nil {
			return nil, nil, err
		}
		block, _ := pem.Decode(priv)
		if block == nil {
			return nil, nil, fmt.Errorf("%s: no PEM block: %w", path, errdefs.ErrInvalidArgument)
		}
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			err = fmt.Errorf("PEM type %q", block.Type)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: not a private key: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
	} else {
		k, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			return nil, nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, nil, err
		}
		key, priv = k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	signer, ok := key.(interface{ Public() crypto.PublicKey })
	if !ok {
		return nil, nil, fmt.Errorf("%s: unsupported key type %T: %w", path, key, errdefs.ErrInvalidArgument)
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, nil, err
	}
	return priv, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// loadImage reads SOURCE from a registry or a docker archive, choosing
// --platform from an index.
func loadImage(c *cli.Context, src string) (v1.Image, error) {
	if p, ok := strings.CutPrefix(src, archivePrefix); ok {
		img, err := tarball.ImageFromPath(p, nil)
		if err != nil {
			return nil, fmt.Errorf("source archive %s: %w", p, err)
		}
		return img, nil
	}
	ref, err := name.ParseReference(src, nameOpts(c)...)
	if err != nil {
		return nil, fmt.Errorf("source %q: %v: %w", src, err, errdefs.ErrInvalidArgument)
	}
	plat, err := v1.ParsePlatform(c.String("platform"))
	if err != nil {
		return nil, fmt.Errorf("--platform: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	img, err := remote.Image(ref, remote.WithContext(c.Context), remote.WithPlatform(*plat), remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

// encryptedMediaType maps a layer media type to its ocicrypt encrypted
// form (Docker types become OCI ones, as imgcrypt does).
func encryptedMediaType(mt types.MediaType) (string, error) {
	switch mt {
	case types.OCILayer, types.DockerLayer:
		return ocispec.MediaTypeImageLayerGzip + "+encrypted", nil
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		return ocispec.MediaTypeImageLayer + "+encrypted", nil
	case types.OCILayerZStd:
		return string(types.OCILayerZStd) + "+encrypted", nil
	}
	if strings.HasSuffix(string(mt), "+encrypted") {
		return "", fmt.Errorf("layer is already encrypted (%s): %w", mt, errdefs.ErrInvalidArgument)
	}
	return "", fmt.Errorf("layer media type %s cannot be encrypted: %w", mt, errdefs.ErrNotImplemented)
}

// encryptImage returns img with every layer encrypted by ocicrypt, as an
// OCI image with the same config (diff IDs unchanged).
func encryptImage(img v1.Image, ec *encconfig.EncryptConfig, progress io.Writer) (v1.Image, []encryptedInfo, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	out := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	out = mutate.ConfigMediaType(out, types.OCIConfigJSON)
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs = nil
	if out, err = mutate.ConfigFile(out, cf); err != nil {
		return nil, nil, err
	}
	var infos []encryptedInfo
	for i, l := range layers {
		mt, err := l.MediaType()
		if err != nil {
			return nil, nil, err
		}
		emt, err := encryptedMediaType(mt)
		if err != nil {
			return nil, nil, fmt.Errorf("layer %d: %w", i, err)
		}
		el, err := encryptLayer(l, emt, ec)
		if err != nil {
			return nil, nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if out, err = mutate.Append(out, mutate.Addendum{Layer: el, Annotations: el.annotations, MediaType: types.MediaType(emt)}); err != nil {
			return nil, nil, err
		}
		infos = append(infos, encryptedInfo{Digest: el.digest.String(), MediaType: emt, Size: int64(len(el.blob)), DiffID: el.diffID.String()})
		fmt.Fprintf(progress, "layer %d/%d %s: %d bytes of ciphertext (%s)\n", i+1, len(layers), el.digest.Encoded()[:12], len(el.blob), emt)
	}
	return out, infos, nil
}

// encLayer is an encrypted layer held in memory.
type encLayer struct {
	blob        []byte
	digest      digest.Digest
	diffID      v1.Hash
	mediaType   types.MediaType
	annotations map[string]string
}

func encryptLayer(l v1.Layer, mediaType string, ec *encconfig.EncryptConfig) (*encLayer, error) {
	d, err := l.Digest()
	if err != nil {
		return nil, err
	}
	diffID, err := l.DiffID()
	if err != nil {
		return nil, err
	}
	size, err := l.Size()
	if err != nil {
		return nil, err
	}
	mt, _ := l.MediaType()
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	desc := ocispec.Descriptor{MediaType: string(mt), Digest: digest.Digest(d.String()), Size: size}
	r, finalize, err := ocicrypt.EncryptLayer(ec, rc, desc)
	if err != nil {
		return nil, err
	}
	ct, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	ann, err := finalize()
	if err != nil {
		return nil, err
	}
	return &encLayer{blob: ct, digest: digest.FromBytes(ct), diffID: diffID, mediaType: types.MediaType(mediaType), annotations: ann}, nil
}

func (e *encLayer) Digest() (v1.Hash, error) { return v1.NewHash(e.digest.String()) }
func (e *encLayer) DiffID() (v1.Hash, error) { return e.diffID, nil }
func (e *encLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(e.blob)), nil
}
func (e *encLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("an encrypted layer has no uncompressed form here: %w", errdefs.ErrNotImplemented)
}
func (e *encLayer) Size() (int64, error)                { return int64(len(e.blob)), nil }
func (e *encLayer) MediaType() (types.MediaType, error) { return e.mediaType, nil }

// addPolicyRule adds rule to the broker's policy, replacing rules that
// cover exactly the same resources.
func addPolicyRule(ctx context.Context, a interface {
	Policy(context.Context) ([]byte, error)
	SetPolicy(context.Context, []byte) error
}, rule kbs.Rule) error {
	doc, err := a.Policy(ctx)
	if err != nil {
		return fmt.Errorf("read the broker's policy: %w", err)
	}
	var p kbs.Policy
	if len(bytes.TrimSpace(doc)) > 0 {
		if err := json.Unmarshal(doc, &p); err != nil {
			return fmt.Errorf("the broker's policy does not parse: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	p.Rules = slices.DeleteFunc(p.Rules, func(r kbs.Rule) bool { return slices.Equal(r.Resources, rule.Resources) })
	p.Rules = append(p.Rules, rule)
	nd, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := a.SetPolicy(ctx, nd); err != nil {
		return fmt.Errorf("set the broker's policy: %w", err)
	}
	return nil
}
