package config

import (
	"encoding"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

//go:generate go run ./internal/gendoc ../docs/CONFIG.md

// refSection is one TOML table of the reference.
type refSection struct {
	path    string // "daemon", "runtime.handlers.<name>"
	comment string
	rows    []refRow
}

// refRow is one key of a table.
type refRow struct {
	key, typ, def, comment string
}

// Reference writes the Markdown configuration reference (docs/CONFIG.md):
// every table and key of Config with its type, its default and the text of
// its `comment` tag. A key without a comment tag is an error, so new
// configuration cannot go undocumented.
func Reference(w io.Writer) error {
	defaults, err := Defaults()
	if err != nil {
		return err
	}
	sections, err := referenceSections(reflect.ValueOf(*defaults), func(t reflect.Type) (reflect.Value, error) {
		return elementDefaults(defaults, t)
	})
	if err != nil {
		return err
	}
	return writeReference(w, sections, defaultsTOML)
}

// elementDefaults is what an entry of a table-of-tables gets for the keys it
// leaves unset; each such map type must be listed here.
func elementDefaults(c *Config, t reflect.Type) (reflect.Value, error) {
	switch t {
	case reflect.TypeFor[Handler]():
		r := Runtime{GuestDir: c.Runtime.GuestDir, Handlers: map[string]Handler{"new": {}}}
		r.fillDefaults()
		return reflect.ValueOf(r.Handlers["new"]), nil
	}
	return reflect.Value{}, fmt.Errorf("config reference: no defaults known for table entries of type %s", t)
}

// referenceSections walks the struct v (holding the defaults) into one
// section per table, parents before their sub-tables.
func referenceSections(v reflect.Value, elemDefaults func(reflect.Type) (reflect.Value, error)) ([]refSection, error) {
	var out []refSection
	err := walkTable(&out, "", "", v, elemDefaults)
	return out, err
}

func walkTable(out *[]refSection, path, comment string, v reflect.Value, elemDefaults func(reflect.Type) (reflect.Value, error)) error {
	type subTable struct {
		path, comment string
		v             reflect.Value
	}
	sec := refSection{path: path, comment: comment}
	var subs []subTable
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name := tomlName(f)
		if name == "" {
			continue
		}
		key := joinKey(path, name)
		doc := f.Tag.Get("comment")
		if doc == "" {
			return fmt.Errorf("config reference: %s has no comment tag: say what the key does", key)
		}
		fv := v.Field(i)
		switch {
		case isTable(f.Type):
			subs = append(subs, subTable{key, doc, fv})
		case f.Type.Kind() == reflect.Map && isTable(f.Type.Elem()):
			elem, err := elemDefaults(f.Type.Elem())
			if err != nil {
				return err
			}
			sub := key + ".<name>"
			sec.rows = append(sec.rows, refRow{key: name, typ: "tables by name, see `[" + sub + "]`", def: mapKeys(fv), comment: doc})
			subs = append(subs, subTable{sub, doc, elem})
		default:
			typ, err := typeName(f.Type)
			if err != nil {
				return fmt.Errorf("config reference: %s: %w", key, err)
			}
			sec.rows = append(sec.rows, refRow{key: name, typ: typ, def: tomlValue(fv), comment: doc})
		}
	}
	if len(sec.rows) > 0 {
		*out = append(*out, sec)
	}
	for _, s := range subs {
		if err := walkTable(out, s.path, s.comment, s.v, elemDefaults); err != nil {
			return err
		}
	}
	return nil
}

// tomlName is the key a field has in TOML; "" when it has none.
func tomlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	switch name {
	case "-":
		return ""
	case "":
		return f.Name
	}
	return name
}

func joinKey(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

var textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()

// isTable: a struct that is not written as a single value.
func isTable(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !t.Implements(textMarshaler)
}

// typeName names a leaf type the way an operator writes it in TOML. Types it
// does not know are errors, so a new kind of value gets a name here first.
func typeName(t reflect.Type) (string, error) {
	if t == reflect.TypeFor[Duration]() {
		return `duration ("5s", "1m30s")`, nil
	}
	switch t.Kind() {
	case reflect.Pointer: // optional: unset takes a default
		return typeName(t.Elem())
	case reflect.String:
		return "string", nil
	case reflect.Bool:
		return "bool", nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer", nil
	case reflect.Slice:
		elem, err := typeName(t.Elem())
		if err != nil {
			return "", err
		}
		return "list of " + elem + "s", nil
	}
	return "", fmt.Errorf("no documented TOML type for %s", t)
}

// tomlValue renders a leaf value as it would be written in a TOML file.
func tomlValue(v reflect.Value) string {
	if d, ok := v.Interface().(Duration); ok {
		return strconv.Quote(shortDuration(d))
	}
	if m, ok := v.Interface().(encoding.TextMarshaler); ok {
		b, err := m.MarshalText()
		if err != nil {
			return "?"
		}
		return strconv.Quote(string(b))
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return ""
		}
		return tomlValue(v.Elem())
	case reflect.String:
		return strconv.Quote(v.String())
	case reflect.Slice:
		items := make([]string, 0, v.Len())
		for i := range v.Len() {
			items = append(items, tomlValue(v.Index(i)))
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	return fmt.Sprint(v.Interface())
}

// shortDuration drops the zero minutes and seconds time.Duration.String
// writes ("4h0m0s" becomes "4h"); the result parses back to the same value.
func shortDuration(d Duration) string {
	s := d.Std().String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// mapKeys lists a table-of-tables' entries, sorted, for the default column.
func mapKeys(v reflect.Value) string {
	keys := make([]string, 0, v.Len())
	for _, k := range v.MapKeys() {
		keys = append(keys, k.String())
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

func writeReference(w io.Writer, sections []refSection, example []byte) error {
	var b strings.Builder
	b.WriteString(referenceHeader)
	b.WriteString("## Tables\n\n")
	for _, s := range sections {
		fmt.Fprintf(&b, "- [`[%s]`](#%s)\n", s.path, anchor(s.path))
	}
	for _, s := range sections {
		fmt.Fprintf(&b, "\n### `[%s]`\n\n%s\n\n", s.path, markdownText(s.comment))
		b.WriteString("| Key | Type | Default | Description |\n|---|---|---|---|\n")
		for _, r := range s.rows {
			def := "`" + strings.ReplaceAll(r.def, "|", `\|`) + "`"
			if r.def == "" {
				def = "(none)"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", r.key, r.typ, def, markdownText(r.comment))
		}
	}
	fmt.Fprintf(&b, "\n## Full example: the embedded defaults\n\n```toml\n%s```\n", example)
	_, err := io.WriteString(w, b.String())
	return err
}

// anchor is the heading id GitHub derives from "`[path]`".
func anchor(path string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(path) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// markdownText keeps comment text literal inside a Markdown table.
var markdownText = strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;").Replace

const referenceHeader = `# cocoond configuration reference

<!-- Generated from the structs in config/ and config/defaults.toml by config/internal/gendoc. Do not edit. -->

This file is generated from cocoond's configuration structs (their ` + "`comment`" + ` tags)
and its embedded defaults. Do not edit it by hand: change the structs or
` + "`config/defaults.toml`" + ` and run ` + "`make generate`" + ` (or ` + "`go generate ./config`" + `).
` + "`make test`" + ` fails while this file is stale.

## Where the configuration comes from

cocoond needs no configuration file: the embedded defaults (the full example at
the end) are a working configuration. On top of them it reads, in order:

1. ` + "`/etc/cocoon/cocoon.toml`" + `, or the file given with ` + "`cocoond --config FILE`" + ` (a missing
   default file is fine; a missing ` + "`--config`" + ` file is an error);
2. every ` + "`*.toml`" + ` file in the ` + "`config.d`" + ` directory beside it
   (` + "`/etc/cocoon/config.d/*.toml`" + `), sorted by name.

A later file overrides only the keys it sets; lists are replaced, not
appended to. Unknown keys and invalid values stop cocoond with an error naming
the file and the key. The flags ` + "`--socket`" + ` and ` + "`--log-level`" + ` override
` + "`daemon.socket`" + ` and ` + "`daemon.log_level`" + `. ` + "`cocoond config`" + ` prints the effective configuration
(defaults, files and drop-ins merged) with a comment on every key.

Runtime handlers are tables under ` + "`[runtime.handlers.<name>]`" + `, one per Kubernetes
RuntimeClass handler. A key of a handler that no file sets takes the Default
column of that table, so a drop-in can add a handler, or change one key of an
existing one, in a few lines.

`
