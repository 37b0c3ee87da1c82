// Package builtin lists the database engines compiled into credbroker. It is
// the one place that imports every engine package: adding an engine is a new
// package under plugins/ and one line in BuiltIns. The broker never imports
// it; cmd/ and tests pass Catalog() to broker.ParseConfig. Model: SPIRE's
// pkg/server/catalog BuiltIns().
package builtin

import (
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/mysql"
	"github.com/credbroker/credbroker/plugins/postgres"
)

// BuiltIns returns one factory per built-in engine.
func BuiltIns() []plugins.Factory {
	return []plugins.Factory{
		mysql.Factory{},
		postgres.Factory{},
	}
}

// Catalog is the catalog of the built-in engines.
func Catalog() *plugins.Catalog {
	c, err := plugins.NewCatalog(BuiltIns()...)
	if err != nil {
		panic(err) // two built-ins of one type: a programming error
	}
	return c
}
