// Reads every certificate, CRL and OCSP response jpki-va emits with Go's parsers
// (crypto/x509 and golang.org/x/crypto/ocsp), checks each signature, and verifies
// end-entity chains. Go limits OID arcs to 64 bits, as many parsers do.
//
//	parse LIST
//
// LIST has one item per line, paths to DER files:
//
//	cert FILE ISSUER        a certificate and the certificate that signed it
//	chain FILE ISSUER ROOT  an end-entity certificate, verified up to ROOT
//	crl FILE ISSUER         a CRL (full, delta or the root's ARL)
//	ocsp FILE ISSUER CERT   an OCSP response about CERT, issued under ISSUER
//
// One line out per item, "OK ..." or "FAIL ..."; the exit code is 1 if any failed.
package main

import (
	"bufio"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/ocsp"
)

func cert(path string) (*x509.Certificate, error) {
	der, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func check(fields []string) (string, error) {
	switch {
	case fields[0] == "cert" && len(fields) == 3, fields[0] == "chain" && len(fields) == 4:
		c, err := cert(fields[1])
		if err != nil {
			return "", err
		}
		issuer, err := cert(fields[2])
		if err != nil {
			return "", err
		}
		if err := c.CheckSignatureFrom(issuer); err != nil {
			return "", err
		}
		exts := []string{}
		for _, e := range c.Extensions {
			exts = append(exts, e.Id.String())
		}
		detail := fmt.Sprintf("%s policies=%v ocsp=%v issuers=%v crldp=%v exts=%s",
			c.Subject.CommonName, c.PolicyIdentifiers, c.OCSPServer, c.IssuingCertificateURL,
			c.CRLDistributionPoints, strings.Join(exts, ","))
		if fields[0] == "chain" {
			root, err := cert(fields[3])
			if err != nil {
				return "", err
			}
			roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(root)
			intermediates.AddCert(issuer)
			_, err = c.Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: intermediates,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
			})
			if err != nil {
				return "", err
			}
			detail += " chain=verified"
		}
		return detail, nil
	case fields[0] == "crl" && len(fields) == 3:
		der, err := os.ReadFile(fields[1])
		if err != nil {
			return "", err
		}
		list, err := x509.ParseRevocationList(der)
		if err != nil {
			return "", err
		}
		issuer, err := cert(fields[2])
		if err != nil {
			return "", err
		}
		if err := list.CheckSignatureFrom(issuer); err != nil {
			return "", err
		}
		exts := []string{}
		for _, e := range list.Extensions {
			exts = append(exts, e.Id.String())
		}
		entryExts := map[string]bool{}
		for _, r := range list.RevokedCertificates {
			for _, e := range r.Extensions {
				entryExts[e.Id.String()] = true
			}
		}
		return fmt.Sprintf("number=%v entries=%d exts=%s entry_exts=%v",
			list.Number, len(list.RevokedCertificates), strings.Join(exts, ","), entryExts), nil
	case fields[0] == "ocsp" && len(fields) == 4:
		der, err := os.ReadFile(fields[1])
		if err != nil {
			return "", err
		}
		issuer, err := cert(fields[2])
		if err != nil {
			return "", err
		}
		subject, err := cert(fields[3])
		if err != nil {
			return "", err
		}
		// Checks the signature: the delegated responder's certificate must be signed
		// by the issuer and carry id-kp-OCSPSigning.
		resp, err := ocsp.ParseResponseForCert(der, subject, issuer)
		if err != nil {
			return "", err
		}
		status := map[int]string{ocsp.Good: "good", ocsp.Revoked: "revoked", ocsp.Unknown: "unknown"}[resp.Status]
		responder := ""
		if resp.Certificate != nil {
			responder = resp.Certificate.Subject.CommonName
		}
		return fmt.Sprintf("status=%s reason=%d responder=%q", status, resp.RevocationReason, responder), nil
	}
	return "", fmt.Errorf("bad line")
}

func main() {
	list, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Println("FAIL", err)
		os.Exit(2)
	}
	failed := false
	scanner := bufio.NewScanner(list)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) == 0 {
			continue
		}
		detail, err := check(fields)
		if err != nil {
			failed = true
			fmt.Printf("FAIL %s %s: %v\n", fields[0], fields[1], err)
			continue
		}
		fmt.Printf("OK %s %s %s\n", fields[0], fields[1], detail)
	}
	if failed {
		os.Exit(1)
	}
}
