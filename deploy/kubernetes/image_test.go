package kubernetes_test

import (
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// image is what the repository's Dockerfile puts in the image the manifests
// run, read from the Dockerfile itself.
type image struct {
	binaries   []string // names of the programs in binDir, as built from ./cmd/<name>
	entrypoint []string
	user       string
}

const binDir = "/usr/local/bin/"

var (
	// dockerfileInstruction matches one instruction (continuation lines
	// joined).
	dockerfileInstruction = regexp.MustCompile(`(?m)^([A-Z]+)\s+(.*)$`)
	// cmdPackage matches a package built from ./cmd/<name>.
	cmdPackage = regexp.MustCompile(`\./cmd/([a-z0-9-]+)`)
)

func readDockerfile(t *testing.T) image {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatalf("the manifests run an image built from the repository's Dockerfile: %v", err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	var img image
	var built []string
	final := false
	for _, m := range dockerfileInstruction.FindAllStringSubmatch(text, -1) {
		instr, rest := m[1], strings.TrimSpace(m[2])
		switch instr {
		case "FROM":
			final = !strings.Contains(rest, " AS ")
		case "RUN":
			if strings.Contains(rest, "go build") {
				for _, c := range cmdPackage.FindAllStringSubmatch(rest, -1) {
					built = append(built, c[1])
				}
			}
		case "COPY":
			if !final {
				continue
			}
			f := strings.Fields(rest)
			if len(f) < 2 || f[len(f)-1] != binDir {
				t.Fatalf("final stage: COPY %s: want the programs copied into %s", rest, binDir)
			}
			for _, src := range f[:len(f)-1] {
				if strings.HasPrefix(src, "--") {
					continue
				}
				name := path.Base(src)
				if !slices.Contains(built, name) {
					t.Errorf("final stage copies %s, which no go build of ./cmd/%s made", src, name)
				}
				img.binaries = append(img.binaries, name)
			}
		case "ENTRYPOINT":
			img.entrypoint = jsonArgs(t, instr, rest)
		case "USER":
			img.user = rest
		}
	}
	for _, name := range built {
		if _, err := os.Stat(filepath.Join("..", "..", "cmd", name)); err != nil {
			t.Errorf("Dockerfile builds ./cmd/%s: %v", name, err)
		}
	}
	return img
}

// jsonArgs parses the exec form ["a", "b"] of an instruction.
func jsonArgs(t *testing.T, instr, rest string) []string {
	t.Helper()
	if !strings.HasPrefix(rest, "[") || !strings.HasSuffix(rest, "]") {
		t.Fatalf("%s %s: want the exec form [\"…\"]", instr, rest)
	}
	var out []string
	for _, f := range strings.Split(strings.Trim(rest, "[]"), ",") {
		s, err := strconv.Unquote(strings.TrimSpace(f))
		if err != nil {
			t.Fatalf("%s %s: %v", instr, rest, err)
		}
		out = append(out, s)
	}
	return out
}

// TestImageRunsWhatTheManifestsAsk checks the Dockerfile against every
// container of the manifests that runs the credbroker image: the program a
// container names is in the image, each subcommand and flag it passes is
// one the program knows (asked of the programs built from this tree), and
// the image's user is not root. No image is built here (that needs docker
// and a registry); the Dockerfile's build and the manifests are read.
func TestImageRunsWhatTheManifestsAsk(t *testing.T) {
	img := readDockerfile(t)
	for _, want := range []string{"credbroker", "credbroker-agent"} {
		if !slices.Contains(img.binaries, want) {
			t.Errorf("the image has no %s (has %v)", want, img.binaries)
		}
	}
	if len(img.entrypoint) != 1 || img.entrypoint[0] != binDir+"credbroker" {
		t.Errorf("ENTRYPOINT %q: want [%q]", img.entrypoint, binDir+"credbroker")
	}
	uid, _, _ := strings.Cut(img.user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %q: want a numeric non-root user (the pods run with runAsNonRoot)", img.user)
	}

	dir := t.TempDir()
	for _, name := range img.binaries {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../../cmd/"+name)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
		}
	}
	m := load(t)
	checked := 0
	for name, d := range m.deployments {
		pod := d.Spec.Template.Spec
		for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
			if !strings.Contains(c.Image, "/credbroker:") {
				continue
			}
			checked++
			t.Run(name+"/"+c.Name, func(t *testing.T) { checkContainer(t, c, img, dir) })
		}
	}
	if checked < 3 {
		t.Fatalf("%d containers run the credbroker image; want the broker, its init-store and the app's agent", checked)
	}
}

func checkContainer(t *testing.T, c corev1.Container, img image, dir string) {
	argv := slices.Concat(img.entrypoint, c.Args)
	if len(c.Command) > 0 {
		argv = slices.Concat(c.Command, c.Args)
	}
	prog := path.Base(argv[0])
	if !slices.Contains(img.binaries, prog) || (strings.Contains(argv[0], "/") && argv[0] != binDir+prog) {
		t.Fatalf("runs %q, which the image does not have (it has %v in %s)", argv[0], img.binaries, binDir)
	}
	args := argv[1:]
	if prog == "credbroker" {
		if len(args) == 0 {
			t.Fatal("runs credbroker without a subcommand")
		}
		// The subcommand's own -h lists its flags; an unknown one fails.
		out, _ := exec.Command(filepath.Join(dir, prog), args[0], "-h").CombinedOutput()
		if strings.Contains(string(out), "unknown command") {
			t.Fatalf("credbroker %s: %s", args[0], out)
		}
		checkFlags(t, prog+" "+args[0], args[1:], string(out))
		return
	}
	out, _ := exec.Command(filepath.Join(dir, prog), "-h").CombinedOutput()
	checkFlags(t, prog, args, string(out))
}

// checkFlags checks that each flag in args is in usage, a flag package
// usage text ("  -config string").
func checkFlags(t *testing.T, what string, args []string, usage string) {
	t.Helper()
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !regexp.MustCompile(`(?m)^\s+-` + regexp.QuoteMeta(name) + `\b`).MatchString(usage) {
			t.Errorf("%s: flag %s is not among its flags:\n%s", what, a, usage)
		}
	}
}
