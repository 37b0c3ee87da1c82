// Command pgquery keeps querying PostgreSQL with a credential from
// credbroker that is renewed and rotated under it: a pgx pool follows a
// client.Watcher, so the query loop sees no failure across rotations.
// Ctrl-C revokes the credential (no user is left behind) and exits.
//
//	go run ./examples/pgquery -broker 127.0.0.1:8443 \
//	  -server-id spiffe://example.org/credbroker -role orders-readonly \
//	  -cert certs/client.pem -key certs/client-key.pem -bundle certs/bundle.pem
//
// With a SPIRE agent, replace the three files by -workload-api
// unix:///run/spire/agent.sock.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/client"
)

func main() {
	var (
		addr     = flag.String("broker", "127.0.0.1:8443", "credbroker address (host:port)")
		serverID = flag.String("server-id", "", "the broker's SPIFFE ID (required)")
		role     = flag.String("role", "", "role to ask for (required)")
		socket   = flag.String("workload-api", "", "SPIFFE Workload API socket (unix:///...); instead of -cert/-key/-bundle")
		cert     = flag.String("cert", "", "X.509-SVID certificate (PEM)")
		key      = flag.String("key", "", "its PKCS#8 private key (PEM)")
		bundle   = flag.String("bundle", "", "trust bundle (PEM)")
		query    = flag.String("query", "SELECT current_user", "query to run; the first column of the first row is printed")
		every    = flag.Duration("every", time.Second, "time between queries")
		ttl      = flag.Duration("ttl", 0, "lease ttl (the role's default_ttl when 0)")
		count    = flag.Int("count", 0, "stop after this many queries (0: until interrupted)")
	)
	flag.Parse()
	if *serverID == "" || *role == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *addr, *serverID, *role, *socket, *cert, *key, *bundle, *query, *every, *ttl, *count); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, addr, serverID, role, socket, cert, key, bundle, query string, every, ttl time.Duration, count int) error {
	svid := client.WithFiles(cert, key, bundle)
	if socket != "" {
		svid = client.WithWorkloadAPI(socket)
	}
	c, err := client.New(ctx, addr, client.WithServerID(serverID), svid)
	if err != nil {
		return err
	}
	defer c.Close()

	w, err := c.Watch(ctx, role, client.WatchTTL(ttl), client.OnEvent(func(ev client.Event) {
		// A Credential prints without its password.
		switch ev.Kind {
		case client.Rotated:
			log.Printf("rotated: now %s; %s valid until %s", ev.Credential.Username, ev.Previous.Username, ev.Previous.ExpireTime.Format(time.TimeOnly))
		case client.Renewed:
			log.Printf("renewed: %s until %s", ev.Credential.Username, ev.Credential.ExpireTime.Format(time.TimeOnly))
		default:
			log.Printf("%s: %v %v", ev.Kind, ev.Credential, ev.Err)
		}
	}))
	if err != nil {
		return err
	}
	defer func() {
		if err := w.Close(); err != nil { // revokes the leases it holds
			log.Printf("close: %v", err)
		}
	}()

	cfg, err := w.PgxPoolConfig()
	if err != nil {
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()

	failed := 0
	for n := 1; count == 0 || n <= count; n++ {
		var v any
		if err := pool.QueryRow(ctx, query).Scan(&v); err != nil {
			if ctx.Err() != nil {
				break
			}
			failed++
			log.Printf("query %d failed: %v", n, err)
		} else {
			fmt.Printf("query %d: %v\n", n, v)
		}
		select {
		case <-ctx.Done():
		case <-w.Done():
			return fmt.Errorf("credential ended: %w", w.Err())
		case <-time.After(every):
			continue
		}
		break
	}
	if failed > 0 {
		return errors.New(fmt.Sprint(failed, " queries failed"))
	}
	return nil
}
