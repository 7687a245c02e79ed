package mlassets;

import org.pmml4s.common.StructField;
import org.pmml4s.common.StructType;
import org.pmml4s.data.DataVal;
import org.pmml4s.data.Series;
import org.pmml4s.metadata.Field;
import org.pmml4s.model.Model;

/**
 * Scores a PMML model with pmml4s (the evaluator inside pypmml) over a columnar batch.
 *
 * pypmml's predict(DataFrame) sends JSON; pmml4s turns each JSON record into a Series of
 * the model's used fields with Utils.toDataVal. We build the same Series from columns
 * (Double or null for numeric fields, String or null for the rest) and call the same
 * Model.predict(Series), once per row, on one model copy per worker thread.
 */
public final class PmmlBatchScorer implements AutoCloseable {
    private final Model[] models;
    private final RowSlices slices;
    private final StructType schema;
    private final String[] inNames;
    private final String[] inTypes;
    private final String[] outNames;
    private final String[] outTypes;

    public PmmlBatchScorer(String path, int workers) {
        int k = Math.max(1, workers);
        models = new Model[k];
        for (int i = 0; i < k; i++) {
            models[i] = Model.fromFile(path);
        }
        slices = new RowSlices(k);
        schema = models[0].usedSchema();
        int n = schema.length();
        inNames = new String[n];
        inTypes = new String[n];
        for (int i = 0; i < n; i++) {
            StructField f = schema.apply(i);
            inNames[i] = f.name();
            inTypes[i] = f.dataType().toString();
        }
        StructType out = models[0].outputSchema();
        outNames = new String[out.length()];
        outTypes = new String[out.length()];
        for (int i = 0; i < out.length(); i++) {
            outNames[i] = out.apply(i).name();
            outTypes[i] = out.apply(i).dataType().toString();
        }
    }

    public Model model() {
        return models[0];
    }

    public String[] inputNames() {
        return inNames;
    }

    public String[] inputTypes() {
        return inTypes;
    }

    public String inputOpType(String name) {
        Field f = models[0].field(name);
        if (f == null) {
            return "continuous";
        }
        return f.isCategorical() ? "categorical" : (f.isContinuous() ? "continuous" : "ordinal");
    }

    public String[] outputNames() {
        return outNames;
    }

    public String[] outputTypes() {
        return outTypes;
    }

    /**
     * Scores n rows. {@code kinds[j]} is 0 when input j is given as doubles (column
     * {@code slot[j]} of {@code numeric}, NaN = missing) and 1 when given as strings (column
     * {@code slot[j]} of {@code codes}, an index into {@code dictionary}, -1 = missing).
     * {@code numericOut[k]} says whether output k is returned in the double result (NaN =
     * missing) or in the string result (null = missing). Returns {double[], String[]}, each
     * column-major over the outputs of its kind.
     */
    public synchronized Object[] score(
            int n, int[] kinds, int[] slot, double[] numeric, int[] codes, String[] dictionary, boolean[] numericOut)
            throws Exception {
        final int nIn = inNames.length;
        final int nOut = outNames.length;
        int nNumOut = 0;
        final int[] outSlot = new int[nOut];
        for (int k = 0; k < nOut; k++) {
            outSlot[k] = numericOut[k] ? nNumOut++ : k - nNumOut;
        }
        final double[] numResult = new double[nNumOut * n];
        final String[] strResult = new String[(nOut - nNumOut) * n];
        slices.run(n, (worker, from, to) -> {
            Model m = models[worker];
            int[] outIndex = null;
            for (int i = from; i < to; i++) {
                Object[] values = new Object[nIn];
                for (int j = 0; j < nIn; j++) {
                    if (kinds[j] == 0) {
                        double v = numeric[slot[j] * n + i];
                        values[j] = Double.isNaN(v) ? null : Double.valueOf(v);
                    } else {
                        int c = codes[slot[j] * n + i];
                        values[j] = c < 0 ? null : dictionary[c];
                    }
                }
                Series out = m.predict(Series.fromArray(values, schema));
                if (outIndex == null) {
                    outIndex = indexOf(out);
                }
                for (int k = 0; k < nOut; k++) {
                    int idx = outIndex[k];
                    DataVal v = idx < 0 ? null : out.get(idx);
                    boolean missing = v == null || v.isMissing();
                    if (numericOut[k]) {
                        numResult[outSlot[k] * n + i] = missing ? Double.NaN : v.toDouble();
                    } else {
                        strResult[outSlot[k] * n + i] = missing ? null : v.toVal().toString();
                    }
                }
            }
        });
        return new Object[] {numResult, strResult};
    }

    private int[] indexOf(Series out) {
        String[] columns = out.columns();
        int[] index = new int[outNames.length];
        for (int k = 0; k < outNames.length; k++) {
            index[k] = -1;
            for (int c = 0; c < columns.length; c++) {
                if (columns[c].equals(outNames[k])) {
                    index[k] = c;
                    break;
                }
            }
        }
        return index;
    }

    @Override
    public void close() {
        slices.close();
    }
}
