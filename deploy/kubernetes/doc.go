// Package kubernetes holds the Kubernetes manifests of credbroker and the
// test that decodes them strictly (manifests_test.go). It is a module of
// its own so that k8s.io/api stays out of the broker's module graph.
package kubernetes
