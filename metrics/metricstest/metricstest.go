// Package metricstest finds series in gathered or scraped Prometheus output,
// for tests that cannot compare whole texts (durations, live process figures).
package metricstest

import dto "github.com/prometheus/client_model/go"

// Find returns the first series of family name whose labels include want
// (nil or empty matches any), or nil.
func Find(families []*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			got := Labels(m)
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			return m
		}
	}
	return nil
}

// Labels are a series' labels by name.
func Labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}
