package identity

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// PEM block types of the private key formats a key file may hold.
const (
	pemPKCS8          = "PRIVATE KEY"           // PKCS#8, what go-spiffe reads
	pemSEC1           = "EC PRIVATE KEY"        // SEC1 (openssl ecparam -genkey, cfssl)
	pemPKCS1          = "RSA PRIVATE KEY"       // PKCS#1 (openssl genrsa before 3.0)
	pemPKCS8Encrypted = "ENCRYPTED PRIVATE KEY" // PKCS#8 with a passphrase
)

// ErrKeyFormat means a key file holds no private key in a format the file
// source reads: nothing PEM, an encrypted key, or a block of another type.
var ErrKeyFormat = errors.New("unsupported private key")

// pkcs8KeyPEM returns the private key in keyPEM (the content of file) as a
// PKCS#8 "PRIVATE KEY" PEM block, the only form go-spiffe's x509svid.Parse
// reads. It accepts PKCS#8, SEC1 ("EC PRIVATE KEY", with or without the "EC
// PARAMETERS" block openssl ecparam writes before it) and PKCS#1 ("RSA
// PRIVATE KEY"); "CERTIFICATE" blocks are skipped, so a file holding the
// chain and its key also works, as it does with go-spiffe. An encrypted
// key, or a block of any other type, is refused with an error naming the
// block type found and the openssl command that converts it. The error
// never carries key material.
func pkcs8KeyPEM(keyPEM []byte, file string) ([]byte, error) {
	convert := fmt.Sprintf("convert it to an unencrypted PKCS#8 key with: openssl pkcs8 -topk8 -nocrypt -in %s -out <new key file>", file)
	rest := keyPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("%w in key file %q: no PEM private key block found; want %q (PKCS#8), %q (SEC1) or %q (PKCS#1)",
				ErrKeyFormat, file, pemPKCS8, pemSEC1, pemPKCS1)
		}
		if b.Type == "CERTIFICATE" || b.Type == "EC PARAMETERS" {
			continue
		}
		if strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") || b.Type == pemPKCS8Encrypted {
			return nil, fmt.Errorf("%w in key file %q: the %q block is encrypted, and the broker has no passphrase; %s",
				ErrKeyFormat, file, b.Type, convert)
		}
		var key any
		var err error
		switch b.Type {
		case pemPKCS8:
			return pem.EncodeToMemory(&pem.Block{Type: pemPKCS8, Bytes: b.Bytes}), nil
		case pemSEC1:
			key, err = x509.ParseECPrivateKey(b.Bytes)
		case pemPKCS1:
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			return nil, fmt.Errorf("%w in key file %q: found a %q PEM block; want %q (PKCS#8), %q (SEC1) or %q (PKCS#1): %s",
				ErrKeyFormat, file, b.Type, pemPKCS8, pemSEC1, pemPKCS1, convert)
		}
		if err != nil {
			// The parser's message describes the structure, not the key.
			return nil, fmt.Errorf("%w in key file %q: the %q block does not parse: %v", ErrKeyFormat, file, b.Type, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("%w in key file %q: convert the %q block to PKCS#8: %v", ErrKeyFormat, file, b.Type, err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: pemPKCS8, Bytes: der}), nil
	}
}
