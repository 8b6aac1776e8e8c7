package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// DefaultPath is where cocoond looks for its configuration file.
const DefaultPath = "/etc/cocoon/cocoon.toml"

// EmbeddedDefaults names the origin of keys no file has set.
const EmbeddedDefaults = "embedded defaults"

//go:embed defaults.toml
var defaultsTOML []byte

// Loaded is a decoded configuration with the files it came from.
type Loaded struct {
	Config Config
	// Files lists, in decode order, every file that contributed.
	Files []string
	// origin maps a dotted key ("image.driver") to the file that set it last.
	origin map[string]string
}

// Origin tells which file set key last (EmbeddedDefaults when none did).
func (l *Loaded) Origin(key string) string {
	if f, ok := l.origin[key]; ok {
		return f
	}
	return EmbeddedDefaults
}

// Sources names where the configuration came from, in decode order: the
// embedded defaults, then every file.
func (l *Loaded) Sources() []string {
	return append([]string{EmbeddedDefaults}, l.Files...)
}

// Defaults returns the embedded defaults alone.
func Defaults() (*Config, error) {
	l := &Loaded{origin: map[string]string{}}
	if err := l.decode(EmbeddedDefaults, defaultsTOML); err != nil {
		return nil, err
	}
	l.Config.Runtime.fillDefaults()
	return &l.Config, nil
}

// Load decodes the embedded defaults, then path, then the sorted drop-ins in
// <dir of path>/config.d/*.toml onto one struct, and validates the result.
// A missing path is fine unless required is set (the user named it explicitly).
func Load(path string, required bool) (*Loaded, error) {
	l := &Loaded{origin: map[string]string{}}
	if err := l.decode(EmbeddedDefaults, defaultsTOML); err != nil {
		return nil, err
	}
	clear(l.origin) // keys from the defaults have no file to name

	files := []string{path}
	dropIns, err := filepath.Glob(filepath.Join(filepath.Dir(path), "config.d", "*.toml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(dropIns)
	files = append(files, dropIns...)

	for i, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) && i == 0 && !required {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := l.decode(f, data); err != nil {
			return nil, err
		}
		l.Files = append(l.Files, f)
	}

	l.Config.Runtime.fillDefaults()
	if errs := l.Config.Validate(); len(errs) > 0 {
		msgs := make([]string, 0, len(errs))
		for _, e := range errs {
			msgs = append(msgs, fmt.Sprintf("%s: %s", l.Origin(e.Key), e))
		}
		return nil, fmt.Errorf("config: invalid:\n  %s", strings.Join(msgs, "\n  "))
	}
	return l, nil
}

// decode applies one TOML document on top of what is already decoded and
// records which keys it set. Unknown keys are errors: a typo must not be ignored.
func (l *Loaded) decode(name string, data []byte) error {
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&l.Config); err != nil {
		return fmt.Errorf("config: %s: %s", name, describeDecodeError(err))
	}
	var tree map[string]any
	if err := toml.Unmarshal(data, &tree); err != nil {
		return fmt.Errorf("config: %s: %w", name, err)
	}
	recordKeys(l.origin, name, "", tree)
	return nil
}

func recordKeys(origin map[string]string, file, prefix string, tree map[string]any) {
	for k, v := range tree {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			recordKeys(origin, file, key, sub)
			continue
		}
		origin[key] = file
	}
}

func describeDecodeError(err error) string {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		keys := make([]string, 0, len(strict.Errors))
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return "unknown key(s): " + strings.Join(keys, ", ")
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return fmt.Sprintf("line %d column %d: key %s: %s", row, col, key, de.Error())
		}
		return fmt.Sprintf("line %d column %d: %s", row, col, de.Error())
	}
	return err.Error()
}

// Marshal renders the effective configuration as TOML, with key comments.
func (c *Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf).SetIndentTables(false)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
