package agent

import (
	"fmt"
	"net/http"
)

// healthHandler serves /healthz and /readyz: 200 once every credential
// has been delivered (its file written) and none has ended or expired,
// 503 otherwise, with a line saying why. Only roles and states: never a
// credential, a username or a path.
func (a *Agent) healthHandler() http.Handler {
	h := func(w http.ResponseWriter, r *http.Request) {
		code, msg := a.health()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		fmt.Fprintln(w, msg)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h)
	mux.HandleFunc("GET /readyz", h)
	return mux
}

func (a *Agent) health() (int, string) {
	now := a.o.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.slots {
		switch {
		case s.ended != nil:
			return http.StatusServiceUnavailable, "role " + s.cfg.Role + ": ended"
		case s.cur == nil:
			return http.StatusServiceUnavailable, "role " + s.cfg.Role + ": waiting for the first credential"
		case s.cfg.File != nil && s.written == nil:
			return http.StatusServiceUnavailable, "role " + s.cfg.Role + ": file not written yet"
		case !now.Before(s.cur.ExpireTime):
			return http.StatusServiceUnavailable, "role " + s.cfg.Role + ": lease expired"
		}
	}
	if !a.ready {
		return http.StatusServiceUnavailable, "starting"
	}
	if a.cfg.Exec != nil && a.child == nil {
		return http.StatusServiceUnavailable, "command not running"
	}
	return http.StatusOK, "ok"
}
