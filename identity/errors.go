package identity

import "errors"

// Sentinel errors. Compare with errors.Is: the returned errors wrap these with
// detail about the caller or the input, never about what would be allowed.
var (
	// ErrNoPeerID means the context carries no verified SPIFFE ID of a peer.
	ErrNoPeerID = errors.New("identity: no verified peer spiffe id")
	// ErrSVIDNotValid means the peer's X.509-SVID (or a certificate of the
	// chain it presented) has expired, or is not valid yet, at the time of
	// the call.
	ErrSVIDNotValid = errors.New("identity: peer svid not valid at this time")
	// ErrUnknownRole means the role is not configured.
	ErrUnknownRole = errors.New("identity: unknown role")
	// ErrNotAllowed means the caller may not use the role.
	ErrNotAllowed = errors.New("identity: not allowed")
	// ErrInvalidPattern means a SPIFFE ID pattern could not be parsed.
	ErrInvalidPattern = errors.New("identity: invalid spiffe id pattern")
)
