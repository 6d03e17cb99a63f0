// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"slices"
)

// medians prints, for the reports at paths, each figure they all have:
// its median, lowest and highest for each side and for the ratio, which
// is taken within each run, where both sides shared the machine.
func medians(paths []string, w io.Writer) error {
	var reports []*report
	for _, p := range paths {
		r, err := loadReport(p)
		if err != nil {
			return err
		}
		reports = append(reports, r)
	}
	if len(reports) == 0 {
		return fmt.Errorf("no reports")
	}
	fmt.Fprintf(w, "%d runs; each cell the median (lowest to highest).\n\n", len(reports))
	fmt.Fprintf(w, "| | unit | Tether | Mosquitto | Tether / Mosquitto |\n|---|---|---:|---:|---:|\n")
	for _, f := range reports[0].Figures {
		var t, m, ratio []float64
		for _, r := range reports {
			i := slices.IndexFunc(r.Figures, func(g figure) bool { return g.Name == f.Name })
			if i < 0 {
				break
			}
			g := r.Figures[i]
			t, m = append(t, g.Tether), append(m, g.Mosquitto)
			if g.Ratio != nil {
				ratio = append(ratio, *g.Ratio)
			}
		}
		if len(t) < len(reports) {
			continue // not in every report
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", f.Name, f.Unit, spread(t), spread(m), spread(ratio))
	}
	return nil
}

// spread is "median (lowest to highest)", or "–" for no values.
func spread(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	v = slices.Sorted(slices.Values(v))
	mid := v[len(v)/2]
	if len(v)%2 == 0 {
		mid = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return fmt.Sprintf("%s (%s to %s)", num(mid), num(v[0]), num(v[len(v)-1]))
}
