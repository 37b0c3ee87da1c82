package kubernetes_test

import (
	"github.com/credbroker/credbroker/agent"
	"maps"

	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/plugins/builtin"
)

// clusterSPIFFEID is spire-controller-manager's ClusterSPIFFEID (a CRD, so
// not in k8s.io/api) with the spec fields its documentation lists
// (docs/clusterspiffeid-crd.md of spire-controller-manager); strict
// decoding refuses any other.
type clusterSPIFFEID struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              clusterSPIFFEIDSpec `json:"spec"`
}

type clusterSPIFFEIDSpec struct {
	SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
	NamespaceSelector         *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
	DNSNameTemplates          []string              `json:"dnsNameTemplates,omitempty"`
	WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
	TTL                       *metav1.Duration      `json:"ttl,omitempty"`
	JWTTTL                    *metav1.Duration      `json:"jwtTtl,omitempty"`
	FederatesWith             []string              `json:"federatesWith,omitempty"`
	Admin                     bool                  `json:"admin,omitempty"`
	Downstream                bool                  `json:"downstream,omitempty"`
	AutoPopulateDNSNames      bool                  `json:"autoPopulateDNSNames,omitempty"`
	Fallback                  bool                  `json:"fallback,omitempty"`
	ClassName                 string                `json:"className,omitempty"`
	Hint                      string                `json:"hint,omitempty"`
}

// agentConfig is the part of the `credbroker agent` config the manifests
// rely on (README.md, "The agent's config"), decoded strictly; agentConf
// also runs the agent's own parser on it.
type agentConfig struct {
	Broker struct {
		Addr     string `json:"addr"`
		ServerID string `json:"server_id"`
	} `json:"broker"`
	WorkloadAPI struct {
		Socket string `json:"socket"`
	} `json:"workload_api"`
	Credentials []struct {
		Role string `json:"role"`
		TTL  string `json:"ttl"`
		File struct {
			Path     string `json:"path"`
			Mode     int    `json:"mode"`
			Template string `json:"template"`
		} `json:"file"`
	} `json:"credentials"`
	Health struct {
		Listen string `json:"listen"`
	} `json:"health"`
}

// manifests is every object of the YAML files in this directory.
type manifests struct {
	namespaces  map[string]*corev1.Namespace
	configMaps  map[string]*corev1.ConfigMap // by namespace/name
	secrets     map[string]*corev1.Secret
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	spiffeIDs   map[string]*clusterSPIFFEID
	accounts    map[string]*corev1.ServiceAccount
	budgets     map[string]*policyv1.PodDisruptionBudget
}

func newScheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	// The built-in groups a deployment of the broker may use.
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme,
		rbacv1.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// documents splits a YAML stream into its documents, skipping empty ones.
func documents(t *testing.T, b []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatal(err)
		}
		if len(m) > 0 {
			docs = append(docs, doc)
		}
	}
}

// unmarshalStrict decodes YAML into v as the API server decodes JSON: field
// names match case-sensitively, and an unknown or duplicate field is an
// error (sigs.k8s.io/yaml's own UnmarshalStrict matches names the way
// encoding/json does, ignoring case, so "podselector" would pass).
func unmarshalStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(j, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// decodeStrict decodes one document: built-in kinds with the Kubernetes
// API types through a strict decoder (unknown or duplicate fields fail),
// ClusterSPIFFEID with unmarshalStrict into clusterSPIFFEID.
func decodeStrict(scheme *runtime.Scheme, doc []byte) (runtime.Object, *clusterSPIFFEID, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, nil, err
	}
	if tm.Kind == "ClusterSPIFFEID" {
		if tm.APIVersion != "spire.spiffe.io/v1alpha1" {
			return nil, nil, fmt.Errorf("ClusterSPIFFEID apiVersion %q, want spire.spiffe.io/v1alpha1", tm.APIVersion)
		}
		var c clusterSPIFFEID
		if err := unmarshalStrict(doc, &c); err != nil {
			return nil, nil, err
		}
		return nil, &c, nil
	}
	dec := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	obj, _, err := dec.Decode(doc, nil, nil)
	return obj, nil, err
}

func load(t *testing.T) *manifests {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	m := &manifests{
		namespaces: map[string]*corev1.Namespace{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, deployments: map[string]*appsv1.Deployment{},
		services: map[string]*corev1.Service{}, spiffeIDs: map[string]*clusterSPIFFEID{},
		accounts: map[string]*corev1.ServiceAccount{}, budgets: map[string]*policyv1.PodDisruptionBudget{},
	}
	scheme := newScheme(t)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documents(t, b) {
			obj, csid, err := decodeStrict(scheme, doc)
			if err != nil {
				t.Fatalf("%s, document %d: %v", f, i+1, err)
			}
			if csid != nil {
				m.spiffeIDs[csid.Name] = csid
				continue
			}
			key := func(o metav1.Object) string {
				if o.GetNamespace() == "" && o.GetName() != "" {
					if _, ok := obj.(*corev1.Namespace); !ok {
						t.Fatalf("%s, document %d: %T %s has no namespace", f, i+1, obj, o.GetName())
					}
				}
				return o.GetNamespace() + "/" + o.GetName()
			}
			switch o := obj.(type) {
			case *corev1.Namespace:
				m.namespaces[o.Name] = o
			case *corev1.ConfigMap:
				m.configMaps[key(o)] = o
			case *corev1.Secret:
				m.secrets[key(o)] = o
			case *appsv1.Deployment:
				m.deployments[key(o)] = o
			case *corev1.Service:
				m.services[key(o)] = o
			case *corev1.ServiceAccount:
				m.accounts[key(o)] = o
			case *policyv1.PodDisruptionBudget:
				m.budgets[key(o)] = o
			default:
				t.Fatalf("%s, document %d: unexpected kind %T", f, i+1, obj)
			}
		}
	}
	return m
}

// A misspelt field anywhere fails the decoding: the test would catch it.
func TestStrictDecodingRefusesMisspeltFields(t *testing.T) {
	scheme := newScheme(t)
	for _, tc := range []struct{ name, doc string }{
		{"pod spec", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x, namespace: y}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      contianers: [{name: c, image: i}]
`},
		{"volume", `
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: y}
spec:
  containers: [{name: c, image: i}]
  volumes: [{name: v, emptyDir: {medium: Memory, sizelimit: 1Mi}}]
`},
		{"duplicate field", `
apiVersion: v1
kind: ConfigMap
metadata: {name: x, namespace: y}
data: {a: b}
data: {c: d}
`},
		{"clusterspiffeid", `
apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata: {name: x}
spec:
  spiffeIDTemplate: spiffe://example.org/x
  podselector: {matchLabels: {a: b}}
`},
		{"unknown kind", `
apiVersion: v1
kind: Pdo
metadata: {name: x}
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := decodeStrict(scheme, []byte(tc.doc)); err == nil {
				t.Fatal("decoded without error")
			}
		})
	}
	// The same documents spelt right decode.
	if _, _, err := decodeStrict(scheme, []byte(`
apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata: {name: x}
spec:
  spiffeIDTemplate: spiffe://example.org/x
  podSelector: {matchLabels: {a: b}}
`)); err != nil {
		t.Fatal(err)
	}
}

// Every manifest decodes strictly, and every name one object gives another
// (volumes, mounts, ports, selectors, ConfigMaps, Secrets) resolves.
func TestManifestsDecodeAndResolve(t *testing.T) {
	m := load(t)
	for _, want := range []string{"credbroker/credbroker", "orders/orders-api"} {
		if m.deployments[want] == nil {
			t.Fatalf("no Deployment %s", want)
		}
	}
	for name, d := range m.deployments {
		t.Run(name, func(t *testing.T) {
			if d.Namespace == "" || m.namespaces[d.Namespace] == nil {
				t.Errorf("namespace %q is not among the manifests", d.Namespace)
			}
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("selector %v does not select the pod template's labels %v (%v)", d.Spec.Selector, d.Spec.Template.Labels, err)
			}
			pod := d.Spec.Template.Spec
			if m.accounts[d.Namespace+"/"+pod.ServiceAccountName] == nil {
				t.Errorf("service account %q is not among the manifests", pod.ServiceAccountName)
			}
			vols := map[string]corev1.Volume{}
			for _, v := range pod.Volumes {
				vols[v.Name] = v
				switch {
				case v.ConfigMap != nil && m.configMaps[d.Namespace+"/"+v.ConfigMap.Name] == nil:
					t.Errorf("volume %s: no ConfigMap %s", v.Name, v.ConfigMap.Name)
				case v.Secret != nil && m.secrets[d.Namespace+"/"+v.Secret.SecretName] == nil:
					t.Errorf("volume %s: no Secret %s", v.Name, v.Secret.SecretName)
				case v.CSI != nil && (v.CSI.Driver != "csi.spiffe.io" || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly):
					t.Errorf("volume %s: CSI volume is not a read-only csi.spiffe.io one", v.Name)
				}
			}
			for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
				if c.Image == "" {
					t.Errorf("container %s has no image", c.Name)
				}
				for _, vm := range c.VolumeMounts {
					v, ok := vols[vm.Name]
					if !ok {
						t.Errorf("container %s mounts unknown volume %s", c.Name, vm.Name)
					}
					if vm.SubPath != "" && v.ConfigMap != nil {
						if _, ok := m.configMaps[d.Namespace+"/"+v.ConfigMap.Name].Data[vm.SubPath]; !ok {
							t.Errorf("container %s mounts key %s that ConfigMap %s lacks", c.Name, vm.SubPath, v.ConfigMap.Name)
						}
					}
				}
				ports := map[string]bool{}
				for _, p := range c.Ports {
					ports[p.Name] = true
				}
				for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
					if p == nil {
						continue
					}
					var port string
					switch {
					case p.TCPSocket != nil:
						port = p.TCPSocket.Port.String()
					case p.HTTPGet != nil:
						port = p.HTTPGet.Port.String()
					default:
						t.Errorf("container %s: a probe neither tcp nor http", c.Name)
					}
					if !ports[port] {
						t.Errorf("container %s: probe on port %q it does not declare", c.Name, port)
					}
				}
			}
		})
	}
	for name, s := range m.services {
		sel := labels.SelectorFromSet(s.Spec.Selector)
		var target *corev1.PodTemplateSpec
		for _, d := range m.deployments {
			if d.Namespace == s.Namespace && !sel.Empty() && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				target = &d.Spec.Template
			}
		}
		if target == nil {
			t.Fatalf("service %s selects no pod", name)
		}
		for _, sp := range s.Spec.Ports {
			if !slices.ContainsFunc(target.Spec.Containers, func(c corev1.Container) bool {
				return slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == sp.TargetPort.String() })
			}) {
				t.Errorf("service %s: target port %q is no container's", name, sp.TargetPort.String())
			}
		}
	}
}

// mountPath is where container c mounts volume vol; "" if it does not.
func mountPath(c corev1.Container, vol string) string {
	for _, vm := range c.VolumeMounts {
		if vm.Name == vol {
			return vm.MountPath
		}
	}
	return ""
}

func csiVolume(pod corev1.PodSpec) string {
	for _, v := range pod.Volumes {
		if v.CSI != nil && v.CSI.Driver == "csi.spiffe.io" {
			return v.Name
		}
	}
	return ""
}

func under(path, dir string) bool {
	return dir != "" && strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

func port(t *testing.T, hostport string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return int32(n)
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %s", c.Name, name)
	return 0
}

// brokerConfig parses the broker's ConfigMap with the broker's own parser.
func brokerConfig(t *testing.T, m *manifests) *broker.Config {
	t.Helper()
	cm := m.configMaps["credbroker/credbroker-config"]
	if cm == nil {
		t.Fatal("no ConfigMap credbroker/credbroker-config")
	}
	cfg, err := broker.ParseConfig([]byte(cm.Data["credbroker.yaml"]), builtin.Catalog())
	if err != nil {
		t.Fatalf("the broker refuses its ConfigMap: %v", err)
	}
	return cfg
}

// The broker's config passes its own parser, and what it names (ports,
// socket, password files) is where the Deployment puts it.
func TestBrokerConfigMatchesDeployment(t *testing.T) {
	m := load(t)
	cfg := brokerConfig(t, m)
	d := m.deployments["credbroker/credbroker"]
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	if *d.Spec.Replicas < 2 || d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || cfg.LeaseStore.Postgres == nil {
		t.Errorf("replicas %d, strategy %s: the replicas need a PostgreSQL lease store and roll one at a time", *d.Spec.Replicas, d.Spec.Strategy.Type)
	}
	pdb := m.budgets["credbroker/credbroker"]
	if pdb == nil || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() >= int(*d.Spec.Replicas) ||
		!maps.Equal(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget %+v: want one selecting the broker's pods, minAvailable below the %d replicas", pdb, *d.Spec.Replicas)
	}
	if !slices.Equal(c.Args, []string{"serve", "--config", "/etc/credbroker/credbroker.yaml"}) || mountPath(c, "config") != "/etc/credbroker/credbroker.yaml" {
		t.Errorf("serve args %q, config mounted at %q", c.Args, mountPath(c, "config"))
	}
	if len(pod.InitContainers) != 1 || !slices.Equal(pod.InitContainers[0].Args, []string{"init-store", "--config", "/etc/credbroker/credbroker.yaml"}) ||
		cfg.LeaseStore.Postgres == nil {
		t.Error("init-store in an init container is safe only on a PostgreSQL lease store (it refuses an existing bbolt file)")
	}
	if got, want := port(t, cfg.Listen), containerPort(t, c, "grpc"); got != want {
		t.Errorf("listen port %d, container port grpc %d", got, want)
	}
	if got, want := port(t, cfg.Metrics.Listen), containerPort(t, c, "metrics"); got != want {
		t.Errorf("metrics port %d, container port metrics %d", got, want)
	}
	if sock := strings.TrimPrefix(cfg.SVID.WorkloadAPISocket, "unix://"); !under(sock, mountPath(c, csiVolume(pod))) {
		t.Errorf("workload api socket %s is not in the CSI volume (mounted at %q)", sock, mountPath(c, csiVolume(pod)))
	}
	secret := m.secrets["credbroker/credbroker-db-passwords"]
	files := map[string]string{"lease_store": cfg.LeaseStore.Postgres.PasswordFile}
	for name, db := range cfg.Databases {
		files["databases."+name] = db.PasswordFile
	}
	for _, ctr := range []corev1.Container{c, pod.InitContainers[0]} {
		dir := mountPath(ctr, "secrets")
		for key, f := range files {
			if !under(f, dir) {
				t.Errorf("%s: %s.password_file %q is not in the Secret's mount %q", ctr.Name, key, f, dir)
				continue
			}
			if _, ok := secret.StringData[strings.TrimPrefix(f, dir+"/")]; !ok {
				t.Errorf("%s.password_file %q: the Secret has no such key", key, f)
			}
		}
	}
}

// render renders a ClusterSPIFFEID template for a pod of Deployment d.
func render(t *testing.T, tmpl string, td string, d *appsv1.Deployment) string {
	t.Helper()
	tp, err := template.New("").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	data := map[string]any{
		"TrustDomain":   td,
		"ClusterName":   "example-cluster",
		"ClusterDomain": "cluster.local",
		"PodMeta":       metav1.ObjectMeta{Name: d.Name + "-7d4b9c-x2x9z", Namespace: d.Namespace, Labels: d.Spec.Template.Labels},
		"PodSpec":       d.Spec.Template.Spec,
	}
	if err := tp.Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// selects reports whether c's selectors select Deployment d's pods (a
// namespace carries the kubernetes.io/metadata.name label of its name).
func selects(t *testing.T, c *clusterSPIFFEID, d *appsv1.Deployment) bool {
	t.Helper()
	for _, s := range []struct {
		sel *metav1.LabelSelector
		set labels.Set
	}{
		{c.Spec.NamespaceSelector, labels.Set{"kubernetes.io/metadata.name": d.Namespace}},
		{c.Spec.PodSelector, labels.Set(d.Spec.Template.Labels)},
	} {
		if s.sel == nil {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(s.sel)
		if err != nil {
			t.Fatal(err)
		}
		if !sel.Matches(s.set) {
			return false
		}
	}
	return true
}

// The SPIFFE IDs line up: the broker's ClusterSPIFFEID gives it the ID the
// agent expects, the app's gives its pods an ID the role allows, and each
// selects only its own pods.
func TestRegistrationsMatchConfig(t *testing.T) {
	m := load(t)
	cfg := brokerConfig(t, m)
	brokerDep, appDep := m.deployments["credbroker/credbroker"], m.deployments["orders/orders-api"]
	brokerEntry, appEntry := m.spiffeIDs["credbroker"], m.spiffeIDs["orders-api"]
	if brokerEntry == nil || appEntry == nil {
		t.Fatal("want ClusterSPIFFEIDs credbroker and orders-api")
	}
	if !selects(t, brokerEntry, brokerDep) || selects(t, brokerEntry, appDep) {
		t.Error("the broker's ClusterSPIFFEID must select the broker's pods and only them")
	}
	if !selects(t, appEntry, appDep) || selects(t, appEntry, brokerDep) {
		t.Error("the app's ClusterSPIFFEID must select the app's pods and only them")
	}

	brokerID := spiffeid.RequireFromString(render(t, brokerEntry.Spec.SPIFFEIDTemplate, cfg.TrustDomain, brokerDep))
	agent := agentConf(t, m)
	if agent.Broker.ServerID != brokerID.String() {
		t.Errorf("agent server_id %s, the broker's registered ID %s", agent.Broker.ServerID, brokerID)
	}
	for _, dns := range brokerEntry.Spec.DNSNameTemplates {
		name := render(t, dns, cfg.TrustDomain, brokerDep)
		if !strings.HasPrefix(name, "credbroker.credbroker.svc") {
			t.Errorf("DNS name %s is not the Service's", name)
		}
	}

	appID := spiffeid.RequireFromString(render(t, appEntry.Spec.SPIFFEIDTemplate, cfg.TrustDomain, appDep))
	for _, cred := range agent.Credentials {
		role, ok := cfg.Roles[cred.Role]
		if !ok {
			t.Errorf("the agent asks for role %s, which the broker does not have", cred.Role)
			continue
		}
		allowed := false
		for _, p := range role.AllowedSPIFFEIDs {
			allowed = allowed || identity.MustParsePattern(p).Match(appID)
		}
		if !allowed {
			t.Errorf("role %s does not allow the app's SPIFFE ID %s", cred.Role, appID)
		}
		if ttl, err := time.ParseDuration(cred.TTL); err != nil || ttl <= 0 || ttl > role.MaxTTL.Duration {
			t.Errorf("credential ttl %q: want a duration up to the role's max_ttl %s (%v)", cred.TTL, role.MaxTTL, err)
		}
	}
}

func agentConf(t *testing.T, m *manifests) agentConfig {
	t.Helper()
	cm := m.configMaps["orders/credbroker-agent"]
	if cm == nil {
		t.Fatal("no ConfigMap orders/credbroker-agent")
	}
	var a agentConfig
	if err := unmarshalStrict([]byte(cm.Data["agent.yaml"]), &a); err != nil {
		t.Fatalf("agent.yaml is not the agent config the manifests rely on: %v", err)
	}
	if _, err := agent.ParseConfig([]byte(cm.Data["agent.yaml"])); err != nil {
		t.Fatalf("agent.yaml is refused by credbroker agent: %v", err)
	}
	return a
}

// The app runs the agent as a native sidecar sharing an in-memory volume,
// with its flags, and the agent's config points at what the pod
// mounts and the Service serves.
func TestAppSidecar(t *testing.T) {
	m := load(t)
	d := m.deployments["orders/orders-api"]
	pod := d.Spec.Template.Spec
	if len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("want the agent as the one init container and one app container")
	}
	agentC, app := pod.InitContainers[0], pod.Containers[0]
	if agentC.RestartPolicy == nil || *agentC.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("the agent is not a native sidecar (restartPolicy: Always)")
	}
	if agentC.StartupProbe == nil {
		t.Error("the agent has no startup probe: the app would start before its credential is written")
	}
	if !slices.Equal(agentC.Command, []string{"credbroker-agent"}) || !slices.Equal(agentC.Args, []string{"-config", "/etc/credbroker-agent/agent.yaml"}) {
		t.Errorf("agent command %q args %q, want credbroker-agent -config /etc/credbroker-agent/agent.yaml", agentC.Command, agentC.Args)
	}
	if !under("/etc/credbroker-agent/agent.yaml", mountPath(agentC, "agent-config")) {
		t.Error("agent.yaml is not where the agent's ConfigMap is mounted")
	}
	a := agentConf(t, m)

	var creds *corev1.Volume
	for i, v := range pod.Volumes {
		if v.Name == "creds" {
			creds = &pod.Volumes[i]
		}
	}
	if creds == nil || creds.EmptyDir == nil || creds.EmptyDir.Medium != corev1.StorageMediumMemory {
		t.Fatal("the credential volume is not an in-memory emptyDir")
	}
	agentDir, appDir := mountPath(agentC, "creds"), mountPath(app, "creds")
	if agentDir == "" || agentDir != appDir {
		t.Errorf("agent mounts creds at %q, app at %q", agentDir, appDir)
	}
	if !slices.ContainsFunc(app.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == "creds" && vm.ReadOnly }) {
		t.Error("the app should mount the credentials read-only")
	}
	if mountPath(app, csiVolume(pod)) != "" {
		t.Error("the app needs no Workload API: the agent fetches the SVID")
	}
	if len(a.Credentials) == 0 {
		t.Fatal("the agent config asks for no credential")
	}
	for _, c := range a.Credentials {
		if !under(c.File.Path, agentDir) || c.File.Mode != 0o600 || c.File.Template == "" {
			t.Errorf("credential file %s mode %o: want a 0600 file in the shared volume %s, with a template", c.File.Path, c.File.Mode, agentDir)
		}
		if _, err := template.New("").Parse(c.File.Template); err != nil {
			t.Errorf("template: %v", err)
		}
		if !strings.Contains(app.Args[0], c.File.Path) {
			t.Errorf("the app does not read %s", c.File.Path)
		}
	}
	if sock := strings.TrimPrefix(a.WorkloadAPI.Socket, "unix://"); !under(sock, mountPath(agentC, csiVolume(pod))) {
		t.Errorf("agent socket %s is not in its CSI volume", sock)
	}
	if got, want := port(t, a.Health.Listen), containerPort(t, agentC, "agent-health"); got != want {
		t.Errorf("agent health port %d, container port %d", got, want)
	}
	host, p, err := net.SplitHostPort(a.Broker.Addr)
	if err != nil {
		t.Fatal(err)
	}
	svc := m.services["credbroker/credbroker"]
	if !strings.HasPrefix(host, svc.Name+"."+svc.Namespace+".svc") || p != strconv.Itoa(int(svc.Spec.Ports[0].Port)) {
		t.Errorf("agent broker addr %s is not the broker Service %s/%s:%d", a.Broker.Addr, svc.Namespace, svc.Name, svc.Spec.Ports[0].Port)
	}
}
