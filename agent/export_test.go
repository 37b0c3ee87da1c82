package agent

import (
	"os"

	"github.com/credbroker/credbroker/client"
)

// Render parses text as an agent template and renders it with c.
func Render(text string, c *client.Credential) (string, error) {
	t, err := parseTemplate("test", text)
	if err != nil {
		return "", err
	}
	b, err := render(t, c)
	return string(b), err
}

func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeFileAtomic(path, data, mode)
}
