// Package deploy holds no Go code: the directory has Respite's deployment
// files (docker-compose.yml, config.yaml, prometheus.yml, alerts.yml,
// grafana-dashboard.json), and deploy_test.go checks them and the
// repository's Dockerfile.
package deploy
