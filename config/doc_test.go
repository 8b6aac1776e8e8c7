package config

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// jsonLeafKeys lists every leaf key of t by its json tags ("daemon.socket",
// "runtime.handlers.<name>.vmm"), walking the struct without the generator's code.
func jsonLeafKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		key := prefix + name
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]():
			keys = append(keys, jsonLeafKeys(f.Type, key+".")...)
		case f.Type.Kind() == reflect.Map && f.Type.Elem().Kind() == reflect.Struct:
			keys = append(keys, jsonLeafKeys(f.Type.Elem(), key+".<name>.")...)
		default:
			keys = append(keys, key)
		}
	}
	return keys
}

// referenceTables splits the generated Markdown into table path → its text.
func referenceTables(md string) map[string]string {
	tables := map[string]string{}
	parts := strings.Split(md, "\n### `[")
	for _, p := range parts[1:] {
		path, body, _ := strings.Cut(p, "]`")
		tables[path] = body
	}
	return tables
}

func TestReferenceDocumentsEveryKey(t *testing.T) {
	var buf bytes.Buffer
	if err := Reference(&buf); err != nil {
		t.Fatal(err)
	}
	tables := referenceTables(buf.String())
	keys := jsonLeafKeys(reflect.TypeFor[Config](), "")
	if len(keys) < 30 {
		t.Fatalf("walked only %d keys: %v", len(keys), keys)
	}
	for _, key := range keys {
		i := strings.LastIndex(key, ".")
		table, name := key[:i], key[i+1:]
		body, ok := tables[table]
		if !ok {
			t.Errorf("%s: no table [%s] in the reference (tables: %v)", key, table, tableNames(tables))
			continue
		}
		if !strings.Contains(body, "\n| `"+name+"` | ") {
			t.Errorf("%s: no row for %q in [%s]", key, name, table)
		}
	}
}

func tableNames(tables map[string]string) []string {
	var names []string
	for n := range tables {
		names = append(names, n)
	}
	return names
}

// Every table and key says what it is for: `cocoond config` and docs/CONFIG.md
// print these comments.
func TestEveryConfigFieldHasAComment(t *testing.T) {
	var walk func(t reflect.Type, prefix string) []string
	walk = func(typ reflect.Type, prefix string) []string {
		var missing []string
		for i := range typ.NumField() {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			key := prefix + f.Name
			if strings.TrimSpace(f.Tag.Get("comment")) == "" {
				missing = append(missing, key)
			}
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]():
				missing = append(missing, walk(f.Type, key+".")...)
			case f.Type.Kind() == reflect.Map && f.Type.Elem().Kind() == reflect.Struct:
				missing = append(missing, walk(f.Type.Elem(), key+".")...)
			}
		}
		return missing
	}
	if missing := walk(reflect.TypeFor[Config](), "Config."); len(missing) > 0 {
		t.Fatalf("fields without a comment tag: %v", missing)
	}
}

func TestReferenceRejects(t *testing.T) {
	type leafWithoutComment struct {
		A string `toml:"a" comment:"documented"`
		B string `toml:"b"`
	}
	type tableWithoutComment struct {
		Inner struct {
			A string `toml:"a" comment:"documented"`
		} `toml:"inner"`
	}
	type unknownType struct {
		Ratio float64 `toml:"ratio" comment:"a float"`
	}
	type entry struct {
		A string `toml:"a" comment:"documented"`
	}
	type mapWithoutDefaults struct {
		Things map[string]entry `toml:"things" comment:"things by name"`
	}
	type outer[T any] struct {
		X T `toml:"x" comment:"a table"`
	}
	noElemDefaults := func(reflect.Type) (reflect.Value, error) {
		return reflect.Value{}, os.ErrNotExist
	}
	for _, tt := range []struct {
		name    string
		v       any
		wantErr string
	}{
		{"leaf without comment", outer[leafWithoutComment]{}, "x.b has no comment tag"},
		{"table without comment", outer[tableWithoutComment]{}, "x.inner has no comment tag"},
		{"type without a TOML name", outer[unknownType]{}, "x.ratio: no documented TOML type for float64"},
		{"table of tables without defaults", outer[mapWithoutDefaults]{}, "file does not exist"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := referenceSections(reflect.ValueOf(tt.v), noElemDefaults)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestShortDuration(t *testing.T) {
	for in, want := range map[string]string{
		"4h": "4h", "1m": "1m", "90s": "1m30s", "10s": "10s", "1h30m": "1h30m", "1h0m5s": "1h0m5s", "500ms": "500ms", "0s": "0s",
	} {
		d, err := time.ParseDuration(in)
		if err != nil {
			t.Fatal(err)
		}
		got := shortDuration(Duration(d))
		if got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", in, got, want)
		}
		if back, err := time.ParseDuration(got); err != nil || back != d {
			t.Errorf("%q does not parse back to %v: %v %v", got, d, back, err)
		}
	}
}

// docs/CONFIG.md is what the structs generate today.
func TestConfigReferenceIsCurrent(t *testing.T) {
	committed, err := os.ReadFile("../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Reference(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, buf.Bytes()) {
		t.Fatal("docs/CONFIG.md is stale: run make generate and commit it")
	}
}
