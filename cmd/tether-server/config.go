// SPDX-License-Identifier: Apache-2.0

package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"tether/internal/conftoml"
)

// defaultConfig is the file the packages install and `config check`
// reads unless told otherwise. serve reads a config file only when
// --config names one, so that a server started by hand is never changed
// by a file it was not pointed at.
const defaultConfig = "/etc/tether/server.toml"

// configKey is the key of the config file that sets the flag name:
// --tls-cert is tls_cert.
func configKey(name string) string { return strings.ReplaceAll(name, "-", "_") }

// settingSource says where each of serve's settings came from, so that a
// bad value is named as the operator wrote it: a flag, or a key on a line
// of the config file.
type settingSource struct {
	given map[string]bool // flags given on the command line
	file  string
	doc   *conftoml.Doc // nil without a config file
}

// name is how an error names the setting of flag name.
func (s settingSource) name(name string) string {
	if s.doc != nil && !s.given[name] {
		if line := s.doc.Line(configKey(name)); line > 0 {
			return fmt.Sprintf("%s:%d: %s", s.file, line, configKey(name))
		}
	}
	return "--" + name
}

// parseWithConfig parses args into fs, then sets from the config file
// that the flag --config names every flag the command line did not give:
// flags win over the file. Every flag of fs but --config is a key of the
// file, so that a flag added to serve is a setting of the file too.
func parseWithConfig(fs *flag.FlagSet, args []string) (settingSource, error) {
	src := settingSource{given: map[string]bool{}}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return src, err
		}
		return src, errUsage
	}
	if fs.NArg() > 0 {
		return src, usagef("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) { src.given[f.Name] = true })
	src.file = fs.Lookup("config").Value.String()
	if src.file == "" {
		return src, nil
	}
	doc, err := os.ReadFile(src.file)
	if err != nil {
		return src, usagef("read config: %w", err)
	}
	if src.doc, err = applyConfig(fs, src.file, doc, src.given); err != nil {
		return src, &usageError{err}
	}
	return src, checkSecretsPrivate(src)
}

// checkSecretsPrivate refuses a config file that holds a secret where
// others may read it, as readSecretFile refuses a file of one.
func checkSecretsPrivate(src settingSource) error {
	// The file's mode answers for every secret in it: the first one
	// found names the problem.
	for _, name := range secretFlags {
		line := src.doc.Line(configKey(name))
		if line == 0 {
			continue
		}
		fi, err := os.Stat(src.file)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			return usagef("%s:%d: %s: the file has mode %04o, which lets others read the secret: chmod 600 %s, or move the key to a file of its own (%s_file)",
				src.file, line, configKey(name), mode, src.file, configKey(name))
		}
		return nil
	}
	return nil
}

// applyConfig sets the flags of fs from doc, the config file at path,
// except those in skip. Every bad key is reported with its line: the
// unknown ones, values of the wrong type, and those the flag refuses.
func applyConfig(fs *flag.FlagSet, path string, doc []byte, skip map[string]bool) (*conftoml.Doc, error) {
	d, err := conftoml.ParseFile(path, doc)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(d.Root))
	for k := range d.Root {
		keys = append(keys, k)
	}
	// In the order of the file, so that errors read top to bottom.
	slices.SortFunc(keys, func(a, b string) int { return d.Line(a) - d.Line(b) })
	var errs []error
	for _, key := range keys {
		name := strings.ReplaceAll(key, "_", "-")
		f := fs.Lookup(name)
		err := errors.New("unknown key")
		switch {
		case f == nil || name == "config" || strings.Contains(key, "-"):
		case skip[name]:
			continue
		default:
			err = setFlag(fs, f, d.Root[key])
		}
		if err != nil {
			errs = append(errs, &conftoml.KeyError{File: path, Line: d.Line(key), Key: conftoml.KeyName([]string{key}), Err: err})
		}
	}
	return d, errors.Join(errs...)
}

// setFlag sets f to v, a value of the config file, which must be of the
// TOML type the flag takes: a boolean, an integer, or a string written as
// the flag would be (a duration as "15m"). A repeatable flag also takes
// an array of strings.
func setFlag(fs *flag.FlagSet, f *flag.Flag, v any) error {
	var values []string
	want := "a string"
	switch kind := flagKind(f); {
	case kind == "bool":
		want = "true or false"
		if b, ok := v.(bool); ok {
			values = []string{strconv.FormatBool(b)}
		}
	case kind == "int":
		want = "an integer"
		if n, ok := v.(int64); ok {
			values = []string{strconv.FormatInt(n, 10)}
		}
	case kind == "duration":
		want = `a duration written as a string, such as "15m"`
		if s, ok := v.(string); ok {
			values = []string{s}
		}
	case kind == "list":
		want = "a string or an array of strings"
		values = stringList(v)
	default:
		if s, ok := v.(string); ok {
			values = []string{s}
		}
	}
	if values == nil {
		got := conftoml.TypeName(v)
		if slices.Contains(secretFlags, f.Name) {
			got = "another type" // the value may be the secret, and errors are logged on a reload
		}
		return fmt.Errorf("want %s, got %s", want, got)
	}
	for _, s := range values {
		if err := fs.Set(f.Name, s); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	return nil
}

// secretFlags are the flags whose values are secrets, never shown.
var secretFlags = []string{"enroll-key"}

// repeatable is a flag that may be given several times, each adding to
// the list (--trusted-proxy).
type repeatable interface {
	flag.Value
	repeatable()
}

// flagKind is the TOML type the flag f takes: "bool", "int", "duration",
// "list" or "string".
func flagKind(f *flag.Flag) string {
	if _, ok := f.Value.(repeatable); ok {
		return "list"
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return "string"
	}
	switch g.Get().(type) {
	case bool:
		return "bool"
	case int, int64, uint, uint64:
		return "int"
	case time.Duration:
		return "duration"
	}
	return "string"
}

// stringList is v as a list of strings, nil if it is neither a string
// nor an array of strings.
func stringList(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		list := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil
			}
			list = append(list, s)
		}
		return list
	}
	return nil
}

// configCheck is `tether-server config check`: it reads the settings
// serve would, by default from defaultConfig, and the certificate they
// name, and says whether they are valid, without serving.
func configCheck(args []string, stdout, stderr io.Writer) error {
	st, err := loadSettings(args, defaultConfig, stderr)
	if err != nil {
		return err
	}
	if c := st.cfg; c.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			return usagef("%s and %s: %w", st.src.name("tls-cert"), st.src.name("tls-key"), err)
		}
	}
	if st.src.file == "" {
		fmt.Fprintln(stdout, "no config file; the flags are valid")
		return nil
	}
	fmt.Fprintf(stdout, "%s: valid\n", st.src.file)
	return nil
}
