// Judges certificates as a Java relying party does: the JDK's PKIX CertPathBuilder
// finds the path from the certificate alone (AIA caIssuers), then its
// CertPathValidator checks it with a PKIXRevocationChecker that requires revocation
// information for every certificate of the path (no SOFT_FAIL, not ONLY_END_ENTITY).
//
//   java -Dcom.sun.security.enableCRLDP=true -Dcom.sun.security.enableAIAcaIssuers=true \
//        Validate ocsp|crl ROOT.pem CERT.pem...
//
// ocsp: OCSP preferred (the JDK default), falling back to CRLs only for a certificate
//       that names no OCSP responder (the issuing CA, checked on the root's ARL).
// crl:  CRLs only (PREFER_CRLS + NO_FALLBACK), every certificate by its CRLDP.
// One line per certificate: "<file> VALID <path length>", "<file> REJECTED <reason>
// <index> <message>" or "<file> NOPATH <message>".

import java.io.FileInputStream;
import java.io.InputStream;
import java.security.cert.CertPath;
import java.security.cert.CertPathBuilder;
import java.security.cert.CertPathBuilderException;
import java.security.cert.CertPathValidator;
import java.security.cert.CertPathValidatorException;
import java.security.cert.CertStore;
import java.security.cert.CertificateFactory;
import java.security.cert.CollectionCertStoreParameters;
import java.security.cert.PKIXBuilderParameters;
import java.security.cert.PKIXParameters;
import java.security.cert.PKIXRevocationChecker;
import java.security.cert.TrustAnchor;
import java.security.cert.X509CertSelector;
import java.security.cert.X509Certificate;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;

public final class Validate {
    private Validate() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 3 || !(args[0].equals("ocsp") || args[0].equals("crl"))) {
            System.err.println("usage: Validate ocsp|crl ROOT.pem CERT.pem...");
            System.exit(2);
        }
        CertificateFactory factory = CertificateFactory.getInstance("X.509");
        Set<TrustAnchor> anchors = Set.of(new TrustAnchor(read(factory, args[1]), null));
        for (int i = 2; i < args.length; i++) {
            System.out.println(args[i] + " " + judge(args[0], anchors, read(factory, args[i])));
        }
    }

    private static X509Certificate read(CertificateFactory factory, String file)
            throws Exception {
        try (InputStream in = new FileInputStream(file)) {
            return (X509Certificate) factory.generateCertificate(in);
        }
    }

    private static String judge(String mode, Set<TrustAnchor> anchors, X509Certificate cert)
            throws Exception {
        X509CertSelector target = new X509CertSelector();
        target.setCertificate(cert);
        PKIXBuilderParameters building = new PKIXBuilderParameters(anchors, target);
        building.setRevocationEnabled(false); // revocation is the validator's, below
        building.addCertStore(
                CertStore.getInstance("Collection", new CollectionCertStoreParameters(List.of(cert))));
        CertPath path;
        try {
            path = CertPathBuilder.getInstance("PKIX").build(building).getCertPath();
        } catch (CertPathBuilderException e) {
            return "NOPATH " + e.getMessage();
        }
        CertPathValidator validator = CertPathValidator.getInstance("PKIX");
        PKIXRevocationChecker revocation = (PKIXRevocationChecker) validator.getRevocationChecker();
        if (mode.equals("crl")) {
            revocation.setOptions(EnumSet.of(
                    PKIXRevocationChecker.Option.PREFER_CRLS, PKIXRevocationChecker.Option.NO_FALLBACK));
        } else {
            revocation.setOptions(EnumSet.noneOf(PKIXRevocationChecker.Option.class));
        }
        PKIXParameters validating = new PKIXParameters(anchors);
        validating.setRevocationEnabled(true);
        validating.addCertPathChecker(revocation);
        try {
            validator.validate(path, validating);
            return "VALID " + path.getCertificates().size();
        } catch (CertPathValidatorException e) {
            return "REJECTED " + e.getReason() + " " + e.getIndex() + " " + e.getMessage();
        }
    }
}
