package spiretest

import (
	"fmt"
	"os"
	"strconv"
)

// Propagation knobs. The defaults (5 s server cache reload, 5 s agent sync)
// would make every entry change take up to 10 s to reach the Workload API;
// these bring it to about 1-2 s. Both live under "experimental" in SPIRE
// v1.13.3 (cmd/spire-server/cli/run/run.go, cmd/spire-agent/cli/run/run.go).
const (
	serverCacheReloadInterval = "500ms"
	agentSyncInterval         = "500ms"
)

// serverConfig is a SPIRE server with a SQLite datastore and disk-backed CA
// keys in dataDir (so StartServer after StopServer keeps its entries, CA and
// bundle), join-token node attestation, and its API on 127.0.0.1:port plus the
// unauthenticated admin socket.
func serverConfig(td string, port int, socketPath, dataDir string) string {
	return fmt.Sprintf(`server {
  trust_domain = %[1]s
  bind_address = "127.0.0.1"
  bind_port = %[2]d
  socket_path = %[3]s
  data_dir = %[4]s
  log_level = "DEBUG"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
  experimental {
    cache_reload_interval = %[5]s
  }
}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %[6]s
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = %[7]s
    }
  }
}
`, q(td), port, q(socketPath), q(dataDir), q(serverCacheReloadInterval),
		q(dataDir+"/datastore.sqlite3"), q(dataDir+"/keys.json"))
}

// agentConfig is a SPIRE agent attested with a join token, trusting the
// server on first contact (insecure_bootstrap: tests only), with the unix
// workload attestor (selectors unix:uid:N, unix:gid:N, ...).
func agentConfig(td string, serverPort int, joinToken, socketPath, dataDir string) string {
	return fmt.Sprintf(`agent {
  trust_domain = %[1]s
  server_address = "127.0.0.1"
  server_port = %[2]d
  join_token = %[3]s
  insecure_bootstrap = true
  socket_path = %[4]s
  data_dir = %[5]s
  log_level = "DEBUG"
  experimental {
    sync_interval = %[6]s
  }
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, q(td), serverPort, q(joinToken), q(socketPath), q(dataDir), q(agentSyncInterval))
}

// q quotes s for HCL; strconv's escapes are a subset HCL accepts.
func q(s string) string { return strconv.Quote(s) }

func writeFile(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o600)
}
